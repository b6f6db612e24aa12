"""The trainer's run infrastructure: checkpoints (atomic, pruned, resumable, distributed),
the metrics log and its plot, and the run configuration."""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import re
import socket
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from rere.trainer import checkpoint
from rere.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rere.trainer.config import (add_config_arguments, config_to_dict, load_config, overrides_from_args,
                                 save_config)
from rere.trainer.metrics_log import MetricsLog, plot_metrics, read_metrics

VOCAB = 13


class TiedLM(nn.Module):
    """A tiny language model whose output layer is its embedding (tied weights)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.embed(ids))))


def _train(model, optimizer, scheduler=None, steps: int = 1, seed: int = 0) -> None:
    """Next-token steps on batches from a private generator (the global RNGs stay untouched)."""
    batches = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (2, 6), generator=batches)
        output = model(ids)
        logits = getattr(output, "logits", output)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _assert_same(a, b) -> None:
    """Nested state dicts equal, tensors exactly."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# -- checkpoints ---------------------------------------------------------------------------

def test_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(seed):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                             tie_word_embeddings=True))
        optimizer = AdamW(model.parameters(), lr=1e-2)
        return model, optimizer, LambdaLR(optimizer, lambda step: 1 / (1 + step))

    model, optimizer, scheduler = build(0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    _train(model, optimizer, scheduler, steps=3)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    folder = save_checkpoint(tmp_path, step=3, model=model, optimizer=optimizer, scheduler=scheduler,
                             data_state={"epoch": 0, "position": 6}, config={"lr": 0.01, "ks": [1, 5]},
                             extra={"best_ndcg": 0.5})
    draws = _draws()
    saved = _weights(model), copy.deepcopy(optimizer.state_dict()), scheduler.state_dict()
    _train(model, optimizer, scheduler, seed=9)
    continued = _weights(model)

    restored, restored_optimizer, restored_scheduler = build(1)
    _draws()  # move the generators on: loading must put them back
    info = load_checkpoint(tmp_path, model=restored, optimizer=restored_optimizer, scheduler=restored_scheduler)

    assert folder == tmp_path / "checkpoint-0000003"
    assert info == {"step": 3, "data_state": {"epoch": 0, "position": 6}, "extra": {"best_ndcg": 0.5},
                    "config": {"lr": 0.01, "ks": [1, 5]}}
    assert _draws() == draws
    _assert_same(_weights(restored), saved[0])
    _assert_same(restored_optimizer.state_dict(), saved[1])
    _assert_same(restored_scheduler.state_dict(), saved[2])
    assert restored.lm_head.weight is restored.model.embed_tokens.weight
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        assert len([name for name in f.keys() if name in ("lm_head.weight", "model.embed_tokens.weight")]) == 1
    _train(restored, restored_optimizer, restored_scheduler, seed=9)
    _assert_same(_weights(restored), continued)


def test_latest_pruning_and_saving_a_step_again(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    model = TiedLM()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step=step, model=model, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000002", "checkpoint-0000003", "latest"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-0000003"

    # The new checkpoint is never the one pruned, even when its step is the lowest.
    save_checkpoint(tmp_path, step=1, model=model, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000001", "latest"]

    # The same step again replaces the folder.
    with torch.no_grad():
        model.mid.bias.fill_(7.0)
    save_checkpoint(tmp_path, step=1, model=model, keep=1)
    fresh = TiedLM(seed=5)
    load_checkpoint(tmp_path / "checkpoint-0000001", model=fresh)
    assert torch.equal(fresh.mid.bias, torch.full((8,), 7.0))

    # `latest` naming a folder that is gone: the newest checkpoint folder instead.
    (tmp_path / "latest").write_text("checkpoint-0000009\n")
    with pytest.warns(UserWarning, match="does not exist"):
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-0000001"


@pytest.mark.parametrize("crash", ["writing the weights", "renaming the folder"])
def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, crash):
    model = TiedLM()
    save_checkpoint(tmp_path, step=1, model=model)
    before = _weights(model)
    if crash == "writing the weights":
        def broken_save(module, filename):
            Path(filename).write_bytes(b"half a file")
            raise OSError("disk full")
        monkeypatch.setattr(checkpoint, "save_model", broken_save)
    else:
        real_replace = os.replace

        def broken_replace(source, destination):
            if Path(source).name.startswith(".checkpoint-"):
                raise OSError("killed")
            real_replace(source, destination)
        monkeypatch.setattr(os, "replace", broken_replace)
    with torch.no_grad():
        model.mid.weight.zero_()
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, step=2, model=model)
    monkeypatch.undo()

    assert (tmp_path / "latest").read_text() == "checkpoint-0000001\n"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-0000001"
    assert not (tmp_path / "checkpoint-0000002").exists()
    fresh = TiedLM(seed=5)
    assert load_checkpoint(tmp_path, model=fresh)["step"] == 1
    _assert_same(_weights(fresh), before)
    # The next save clears what the interrupted one left behind.
    save_checkpoint(tmp_path, step=2, model=model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000001", "checkpoint-0000002", "latest"]


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng-rank0.pt",
                                  "state.json"])
def test_a_truncated_file_is_named(tmp_path, name):
    model = TiedLM()
    optimizer = AdamW(model.parameters())
    scheduler = LambdaLR(optimizer, lambda step: 1.0)
    _train(model, optimizer, scheduler)
    folder = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, scheduler=scheduler,
                             config={"name": "run", "ks": [1, 5]})
    path = folder / name
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler)


def test_load_errors_name_the_problem(tmp_path):
    model = TiedLM()
    folder = save_checkpoint(tmp_path, step=1, model=model)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere", model=model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        load_checkpoint(tmp_path / "empty", model=model)
    with pytest.raises(FileNotFoundError, match="optimizer.pt is missing"):
        load_checkpoint(folder, model=model, optimizer=AdamW(model.parameters()))
    other = nn.Sequential(nn.Embedding(VOCAB, 8))
    with pytest.raises(ValueError, match=r"model\.safetensors does not fit the model: missing keys \['0\.weight'\], "
                                         r"unexpected keys \['embed\.weight', 'head\.weight', 'mid\.bias'"):
        load_checkpoint(folder, model=other)
    (folder / "state.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(ValueError, match=r"state\.json: format 'something-else'"):
        load_checkpoint(folder, model=model)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, port: int, run_dir: Path) -> None:
    """One of two gloo ranks: save and reload a DDP model, then a fully_shard (FSDP2) one."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A short timeout: a save that left one rank waiting fails the test instead of hanging it.
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        _save_and_reload(rank, run_dir)
    finally:
        # The models died with _save_and_reload's frame. A DDP model still alive when its
        # process group is destroyed aborts the process at exit ("terminate called without
        # an active exception"): 1 run in ~12 here, 0 in 60 once the model is released first.
        gc.collect()
        dist.destroy_process_group()


def _save_and_reload(rank: int, run_dir: Path) -> None:
    model = nn.parallel.DistributedDataParallel(TiedLM())
    optimizer = AdamW(model.parameters(), lr=0.1)
    _train(model, optimizer)
    torch.manual_seed(100 + rank)  # each rank's generator in its own state
    save_checkpoint(run_dir / "ddp", step=1, model=model, optimizer=optimizer)
    expected = torch.rand(4)
    load_checkpoint(run_dir / "ddp", model=model, optimizer=optimizer)
    assert torch.equal(torch.rand(4), expected), "this rank's RNG was not restored"

    from torch.distributed.fsdp import fully_shard
    sharded = fully_shard(TiedLM())
    sharded_optimizer = AdamW(sharded.parameters(), lr=0.1)
    _train(sharded, sharded_optimizer)
    torch.manual_seed(100 + rank)
    save_checkpoint(run_dir / "fsdp", step=1, model=sharded, optimizer=sharded_optimizer)
    # Reloaded into a differently initialised sharded model, one more step matches.
    reloaded = fully_shard(TiedLM(seed=5))
    reloaded_optimizer = AdamW(reloaded.parameters(), lr=0.1)
    load_checkpoint(run_dir / "fsdp", model=reloaded, optimizer=reloaded_optimizer)
    _train(sharded, sharded_optimizer, seed=1)
    _train(reloaded, reloaded_optimizer, seed=1)
    for a, b in zip(sharded.parameters(), reloaded.parameters()):
        assert torch.equal(a.full_tensor(), b.full_tensor())

    # A failure on one rank raises on every rank, and leaves no checkpoint.
    if rank == 1:
        checkpoint._rng_state = lambda: 1 / 0
    with pytest.raises(ZeroDivisionError if rank == 1 else RuntimeError, match="division|another rank"):
        save_checkpoint(run_dir / "failed", step=1, model=model)


@pytest.mark.slow
def test_distributed_save_writes_one_checkpoint_with_every_ranks_rng(tmp_path):
    mp.spawn(_distributed_worker, args=(_free_port(), tmp_path), nprocs=2)

    # The reference: the same model and step in one process (both ranks saw the same batch).
    reference = TiedLM()
    _train(reference, AdamW(reference.parameters(), lr=0.1))
    assert [p.name for p in (tmp_path / "failed").iterdir()] == [".checkpoint-0000001.tmp"]
    for kind in ("ddp", "fsdp"):
        run_dir = tmp_path / kind
        assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-0000001", "latest"]
        folder = run_dir / "checkpoint-0000001"
        assert {p.name for p in folder.iterdir()} == {"model.safetensors", "optimizer.pt", "rng-rank0.pt",
                                                      "rng-rank1.pt", "state.json"}
        ranks = [torch.load(folder / f"rng-rank{r}.pt", weights_only=True)["torch"] for r in (0, 1)]
        assert not torch.equal(*ranks)
        with safe_open(folder / "model.safetensors", framework="pt") as f:
            assert sorted(f.keys()) == ["embed.weight", "mid.bias", "mid.weight"]  # the tied head once
        loaded = TiedLM(seed=5)
        load_checkpoint(folder, model=loaded)
        assert loaded.head.weight is loaded.embed.weight
        torch.testing.assert_close(_weights(loaded), _weights(reference))


# -- metrics log ---------------------------------------------------------------------------

def test_metrics_log_writes_json_lines_and_resumes_without_duplicates(tmp_path):
    with MetricsLog(tmp_path) as log:
        for step in range(1, 6):
            log.log(step, {"reward": torch.tensor(step / 10), "kl": np.float32(0.5), "invalid": 2})
        log.log(4, {"ndcg@10": 0.25}, split="valid")
        log.log(5, {"loss": float("nan"), "grad_norm": float("inf")})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "ti')  # a line cut by a crash
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 7
    assert records[0]["reward"] == pytest.approx(0.1) and records[0]["kl"] == 0.5 and records[0]["invalid"] == 2
    assert records[5]["split"] == "valid" and records[5]["ndcg@10"] == 0.25
    assert records[6]["loss"] is None and records[6]["grad_norm"] is None
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    with MetricsLog(tmp_path, tensorboard=False, resume_step=3) as log:
        log.log(4, {"reward": 0.9})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("train", 3), ("train", 4)]
    assert records[-1]["reward"] == 0.9

    with pytest.raises(ValueError, match="reserved"), MetricsLog(tmp_path, tensorboard=False) as log:
        log.log(5, {"step": 1.0})
    off = MetricsLog(tmp_path / "rank1", enabled=False)
    off.log(1, {"reward": 1.0})
    off.close()
    assert not (tmp_path / "rank1").exists()


def test_plot_metrics_draws_a_png_and_tolerates_missing_metrics(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for step in range(1, 4):
            log.log(step, {"reward": step / 3, "kl": 0.01 * step})
    png = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots" / "metrics.png")
    assert png == tmp_path / "plots" / "metrics.png"
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
    single = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "one.png", panels=[("valid", "hr@5")])
    assert single.read_bytes().startswith(b"\x89PNG")


# -- configuration -------------------------------------------------------------------------

@dataclass(frozen=True)
class RunConfig:
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (100% at the end of warmup)"})
    batch_size: int = 16
    shuffle: bool = True
    name: str = "run"
    seed: int | None = None
    ks: tuple[int, ...] = (1, 5, 10)
    loss: Literal["grpo", "rpo"] = "grpo"


def test_config_yaml_then_overrides_and_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\nbatch_size: 32\nshuffle: false\nks: [5, 20]\nseed: 3\n")
    cfg = load_config(RunConfig, path, {"batch_size": 64, "name": None, "seed": "7"})
    assert cfg == RunConfig(lr=1e-4, batch_size=64, shuffle=False, ks=(5, 20), seed=7)
    assert load_config(RunConfig) == RunConfig()
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(RunConfig, tmp_path / "saved.yaml") == cfg
    assert config_to_dict(cfg)["ks"] == [5, 20]


@pytest.mark.parametrize("text, message", [
    ("batch_sise: 3\n", r"run\.yaml: key 'batch_sise' is not a configuration field; did you mean batch_size"),
    ("batch_size: 2.5\n", r"run\.yaml: RunConfig\.batch_size: 2\.5 is not int"),
    ("shuffle: maybe\n", r"run\.yaml: RunConfig\.shuffle: 'maybe' is not bool"),
    ("loss: ppo\n", r"run\.yaml: RunConfig\.loss: 'ppo' is not one of \['grpo', 'rpo'\]"),
    ("ks: [1, x]\n", r"run\.yaml: RunConfig\.ks\[1\]: 'x' is not int"),
    ("name: 7\n", r"run\.yaml: RunConfig\.name: 7 is not str \(quote it in YAML\)"),
    ("- lr\n", r"run\.yaml: expected a mapping"),
])
def test_config_errors_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(RunConfig, path)


def test_config_unknown_override_and_bool_for_int():
    with pytest.raises(ValueError, match="override 'batchsize' .*did you mean batch_size"):
        load_config(RunConfig, overrides={"batchsize": 2})
    with pytest.raises(ValueError, match=r"overrides: RunConfig\.batch_size: True is not int"):
        load_config(RunConfig, overrides={"batch_size": True})


def test_config_command_line_round_trip():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RunConfig, skip=("name",))
    help_text = parser.format_help()
    assert "--name" not in help_text and "--no-shuffle" in help_text and "100% at the end" in help_text
    args = parser.parse_args(["--batch-size", "8", "--no-shuffle", "--ks", "1", "3", "--lr", "2e-5",
                              "--loss", "rpo"])
    overrides = overrides_from_args(args, RunConfig)
    assert overrides == {"batch_size": 8, "shuffle": False, "ks": [1, 3], "lr": 2e-5, "loss": "rpo"}
    assert load_config(RunConfig, overrides=overrides) == RunConfig(lr=2e-5, batch_size=8, shuffle=False,
                                                                    ks=(1, 3), loss="rpo")
    assert overrides_from_args(parser.parse_args([]), RunConfig) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--loss", "ppo"])
