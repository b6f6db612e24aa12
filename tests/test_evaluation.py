"""`rere evaluate`: rankings from constrained beam search, metrics, resuming, the CLI."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

import rere.evaluation as evaluation
from rere.catalog import Catalog
from rere.cli import main
from rere.data import Dataset, Example
from rere.data.rere_csv import load_rere_csv
from rere.index import CatalogIndex
from rere.prompts import Prompter
from rere.sampler import beam_search
from tiny_models import tiny_model

WORDS = ["Red", "Blue", "Steel", "Pen", "Pad", "Ink", "Glue", "Tape", "Clip", "Box", "Large", "Small"]


def office_dataset(n_items=24, n_examples=7) -> Dataset:
    titles = [f"{WORDS[i % 12]} {WORDS[(i * 5 + 3) % 12]} No. {i}" for i in range(n_items)]
    titles[5] = titles[4]  # a duplicated title: both items hit for either target
    catalog = Catalog.from_lists([f"i{i}" for i in range(n_items)], titles)
    examples = [Example(f"u{k}", tuple(f"i{(k * 3 + j) % n_items}" for j in range(1 + k % 4)), f"i{(k * 7) % n_items}")
                for k in range(n_examples)]
    return Dataset(catalog, {"test": examples}, source="hand", category="office product")


@pytest.fixture(scope="module")
def model_and_tokenizer(qwen2):
    return tiny_model("llama", 151_936, seed=3), qwen2


def read_rankings(folder):
    return [json.loads(line) for line in (folder / "rankings.jsonl").read_text().splitlines()]


def test_rankings_are_the_beam_search_and_metrics_follow_from_them(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    dataset = office_dataset()
    metrics = evaluation.evaluate(model, tokenizer, dataset, tmp_path, num_beams=8, batch_size=3, progress=False)
    lines = read_rankings(tmp_path)
    assert [line["example"] for line in lines] == list(range(7))

    # Each line is what beam_search returns for that example's prompt alone.
    prompter = Prompter(dataset.catalog, dataset.category)
    index = CatalogIndex.from_catalog(dataset.catalog, tokenizer, vocab_size=151_936)
    example = dataset.splits["test"][4]
    ids = tokenizer([prompter.prompt(example.history)], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = beam_search(model, index, ids.input_ids, ids.attention_mask, num_beams=8)
    assert lines[4]["ranked"] == [dataset.catalog.ids[i] for i in out.item_ids[0].tolist()]

    # HR/NDCG by hand from the file: a hit is an item with the target's title.
    title = {item: t for item, t in zip(dataset.catalog.ids, dataset.catalog.identifiers)}
    ranks = [next((r for r, item in enumerate(line["ranked"]) if title[item] == title[line["target"]]), None)
             for line in lines]
    for k in (1, 3, 5):
        assert metrics[f"HR@{k}"] == pytest.approx(sum(r is not None and r < k for r in ranks) / 7)
        assert metrics[f"NDCG@{k}"] == pytest.approx(
            sum(1 / math.log2(r + 2) for r in ranks if r is not None and r < k) / 7)
    assert json.loads((tmp_path / "metrics.json").read_text())["HR@5"] == metrics["HR@5"]
    assert "| model |" in (tmp_path / "metrics.md").read_text()


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    dataset = office_dataset()
    whole = evaluation.evaluate(model, tokenizer, dataset, tmp_path / "whole", num_beams=6, batch_size=2,
                                progress=False)
    # A run killed while writing its third line: two complete lines and a torn one.
    (tmp_path / "cut").mkdir()
    text = (tmp_path / "whole" / "rankings.jsonl").read_text()
    lines = text.splitlines(keepends=True)
    (tmp_path / "cut" / "rankings.jsonl").write_text("".join(lines[:2]) + lines[2][:25])
    (tmp_path / "cut" / "run.json").write_text((tmp_path / "whole" / "run.json").read_text())
    ranked_prompts = []
    real = evaluation.beam_search
    monkeypatch.setattr(evaluation, "beam_search",
                        lambda model, index, ids, *a, **k: ranked_prompts.append(len(ids)) or real(model, index, ids, *a, **k))
    resumed = evaluation.evaluate(model, tokenizer, dataset, tmp_path / "cut", num_beams=6, batch_size=2,
                                  progress=False)
    assert sum(ranked_prompts) == 5  # only the examples without a complete line
    assert (tmp_path / "cut" / "rankings.jsonl").read_text() == text
    assert resumed == whole


def test_other_settings_in_the_same_folder_are_refused(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    evaluation.evaluate(model, tokenizer, office_dataset(), tmp_path, num_beams=4, limit=2, progress=False)
    with pytest.raises(ValueError, match="num_beams differ"):
        evaluation.evaluate(model, tokenizer, office_dataset(), tmp_path, num_beams=5, limit=2, progress=False)


def test_excluded_history_never_comes_back(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    dataset = office_dataset()
    evaluation.evaluate(model, tokenizer, dataset, tmp_path, num_beams=10, exclude_history=True, progress=False)
    for line, example in zip(read_rankings(tmp_path), dataset.splits["test"]):
        assert not set(line["ranked"]) & set(example.history)


def test_auto_batch_size_follows_the_budget(model_and_tokenizer):
    model, _ = model_and_tokenizer
    small = evaluation.auto_batch_size(model, 50, 500, 30, torch.device("cpu"), budget_bytes=1 << 30)
    large = evaluation.auto_batch_size(model, 50, 500, 30, torch.device("cpu"), budget_bytes=4 << 30)
    assert 1 <= small < large
    assert evaluation.auto_batch_size(model, 50, 500, 30, torch.device("cpu"), budget_bytes=1) == 1


def test_cli_on_the_shared_amazon_split(tmp_path, shared_path, model_and_tokenizer):
    model, _ = model_and_tokenizer
    model.save_pretrained(tmp_path / "model")
    dataset = load_rere_csv(shared_path("amazon-industrial-rere"), category="industrial and scientific product")
    dataset.save(tmp_path / "data")
    args = ["evaluate", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "model"), "--tokenizer", "qwen2",
            "-o", str(tmp_path / "eval"), "--beams", "5", "--limit", "3", "--name", "tiny"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 3 and metrics["invalid"] == 0
    assert all(item in dataset.catalog for line in read_rankings(tmp_path / "eval") for item in line["ranked"])
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "nowhere"),
                 "-o", str(tmp_path / "e2")]) == 1


def run_cli(args: list[str], ranks: int = 1) -> None:
    """`rere ...` in a fresh process (two under torchrun), one thread each so that both runs
    compute the same floats."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if ranks > 1:
        with socket.socket() as probe:  # torchrun's static rendezvous does not take port 0
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", port]
    result = subprocess.run(launcher + ["-m", "rere.cli", *args], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_under_torchrun_write_what_one_process_writes(tmp_path, model_and_tokenizer):
    model, _ = model_and_tokenizer
    model.save_pretrained(tmp_path / "model")
    office_dataset(n_examples=9).save(tmp_path / "data")
    args = ["evaluate", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "model"), "--tokenizer", "qwen2",
            "--beams", "6", "--batch-size", "1", "--device", "cpu"]
    run_cli(args + ["-o", str(tmp_path / "one")])
    one = read_rankings(tmp_path / "one")
    # A killed two-rank run: rank 1 had ranked example 1 (marked, to see it kept, not redone)
    # and was writing example 3; rank 0 had nothing.
    cut = tmp_path / "two"
    cut.mkdir()
    (cut / "run.json").write_text((tmp_path / "one" / "run.json").read_text())
    kept = {**one[1], "scores": [0.5] * len(one[1]["scores"])}
    (cut / "rankings.rank1.jsonl").write_text(json.dumps(kept) + "\n" + json.dumps(one[3])[:30])
    run_cli(args + ["-o", str(cut)], ranks=2)
    two = read_rankings(cut)
    assert [line["example"] for line in two] == list(range(9))  # one file, in split order
    assert two[1] == kept and two[:1] + two[2:] == one[:1] + one[2:]
    assert not list(cut.glob("rankings.rank*"))
    assert json.loads((cut / "metrics.json").read_text()) == json.loads((tmp_path / "one" / "metrics.json").read_text())
