"""`TrainingRun`, the run every trainer shares, driven by a fourth trainer of one page: a
linear model fitted to a fixed target, whose "validation" scores how close it is."""
from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

import pytest
import torch

from rere.trainer.config import setting
from rere.trainer.metrics_log import read_metrics
from rere.trainer.run_settings import RunSettings
from rere.trainer.training_run import TrainingRun, describe_best


@dataclass
class LineSettings(RunSettings):
    steps: int = setting("steps of the run", default=6)
    lr: float = setting("learning rate", default=0.1)
    eval_every: int = setting("validate every N steps", default=2)
    save_every: int = setting("checkpoint every N steps", default=2)


class LineTrainer:
    """Fits w in y = x @ w to a target on random x; validation: ndcg@10 = -distance to it."""

    name, unit, panels, shown = "line", "step", (("train", "loss"), ("valid", "ndcg@10")), {"loss": ".3f"}

    def __init__(self, run: TrainingRun, validation: bool = True, frozen_after: int | None = None):
        self.run, self.validation, self.frozen_after = run, validation, frozen_after
        self.model = torch.nn.Linear(4, 1, bias=False)  # initialised under the run's seed
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=run.settings.lr)
        self.target = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
        self.total_steps = run.settings.steps
        self.position = 0
        self.saved_best = []

    def checkpointed(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer}

    def data_state(self) -> dict:
        return {"position": self.position}

    def restore(self, step: int, data_state: dict) -> None:
        self.position = data_state["position"]

    def step(self) -> dict:
        x = torch.randn(8, 4)  # the RNGs come back from the checkpoint too
        loss = ((x @ self.model.weight.T - x @ self.target.T) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        if self.frozen_after is None or self.position < self.frozen_after:
            self.optimizer.step()
        self.position += 1
        return {"loss": loss.item()}

    def validate(self) -> dict | None:
        if not self.validation:
            return None
        return {"ndcg@10": -float((self.model.weight.detach() - self.target).norm())}

    def save_best(self) -> None:
        self.run.best_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), self.run.best_dir / "weights.pt")
        self.saved_best.append(self.run.step)


def train(folder, resume=False, validation=True, frozen_after=None, **settings):
    run = TrainingRun(folder, LineSettings(**settings), progress=False)
    trainer = LineTrainer(run, validation, frozen_after)
    return run.train(trainer, resume), trainer


def test_a_run_logs_validates_checkpoints_and_keeps_the_best(tmp_path):
    result, trainer = train(tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    valid = [r for r in rows if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4, 6]
    best = max(valid, key=lambda r: r["ndcg@10"])
    assert result["best"] == {"step": best["step"], "ndcg@10": best["ndcg@10"]}
    assert trainer.saved_best[-1] == best["step"] and result["final"]["ndcg@10"] == valid[-1]["ndcg@10"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0000004", "checkpoint-0000006"]
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "metrics.png").stat().st_size > 1000
    assert describe_best(result) == f"best validation ndcg@10 {best['ndcg@10']:.4f} at step {best['step']}"


def test_a_killed_run_resumes_to_the_same_weights_and_logs_each_step_once(tmp_path, monkeypatch):
    whole, whole_trainer = train(tmp_path / "whole")
    real_step = LineTrainer.step

    def killed_at_five(self):
        if self.position == 4:
            raise KeyboardInterrupt("killed")
        return real_step(self)

    monkeypatch.setattr(LineTrainer, "step", killed_at_five)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", save_every=4)
    monkeypatch.setattr(LineTrainer, "step", real_step)
    torch.manual_seed(99)  # as a new process: other RNG state, which the checkpoint replaces
    resumed, trainer = train(tmp_path / "cut", resume=True, save_every=3)  # save_every may change
    assert torch.equal(trainer.model.weight, whole_trainer.model.weight)
    assert resumed["best"] == whole["best"]
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_the_folder_is_guarded_and_other_settings_are_refused_on_resume(tmp_path):
    train(tmp_path / "run", steps=2)
    with pytest.raises(FileExistsError, match="holds a training run: resume it"):
        train(tmp_path / "run", steps=2)
    with pytest.raises(ValueError, match=r"other settings \(lr, steps differ\)"):
        train(tmp_path / "run", resume=True, steps=4, lr=0.2)
    with pytest.raises(FileNotFoundError, match="no checkpoint to continue from"):
        train(tmp_path / "empty", resume=True)
    # Killed before its first checkpoint: only a log. Resuming starts over, without its lines.
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "metrics.jsonl").write_text(json.dumps({"step": 1, "time": 0, "split": "train"}) + "\n")
    result, _ = train(tmp_path / "early", resume=True, steps=2)
    assert result["steps"] == 2
    assert [r["step"] for r in read_metrics(tmp_path / "early" / "metrics.jsonl") if r["split"] == "train"] == [1, 2]
    # Killed before its first metric (RPORec stage 1 writing its caches): only config.yaml.
    run = TrainingRun(tmp_path / "caches", LineSettings(steps=2), progress=False)
    run.claim_folder(resume=False)
    with pytest.raises(FileExistsError, match="resume it"):
        train(tmp_path / "caches", steps=2)
    assert train(tmp_path / "caches", resume=True, steps=2)[0]["steps"] == 2


def test_a_setting_newer_than_the_checkpoint_counts_as_its_default(tmp_path):
    train(tmp_path, steps=2)
    checkpoint = tmp_path / "checkpoint-0000002" / "config.yaml"
    saved = yaml.safe_load(checkpoint.read_text())
    del saved["lora_dropout"]  # a checkpoint written before the field existed
    checkpoint.write_text(yaml.safe_dump(saved))
    assert train(tmp_path, resume=True, steps=2)[0]["steps"] == 2  # lora_dropout 0.0 then and now
    with pytest.raises(ValueError, match=r"\(lora_dropout differ\)"):
        train(tmp_path, resume=True, steps=2, lora_dropout=0.1)


def test_early_stopping_and_a_run_without_validation(tmp_path):
    # Frozen after 2 steps: validations at 2, 4, 6 ... never improve after the first.
    result, trainer = train(tmp_path / "stop", steps=20, frozen_after=2, patience=2)
    assert result["stopped_early"] and result["steps"] == 6 and result["best"]["step"] == 2
    assert (tmp_path / "stop" / "latest").read_text().strip() == "checkpoint-0000006"
    again, _ = train(tmp_path / "stop", resume=True, steps=20, frozen_after=2, patience=2)
    assert again["steps"] == 6  # a stopped run stays stopped
    result, trainer = train(tmp_path / "plain", validation=False)
    assert result["best"] == {"step": 6} and trainer.saved_best == [6]  # best/ is the final model
    assert describe_best(result) == "no validation examples: best/ is the final model"
    assert describe_best(result, "epoch", "RUN/head") == "no validation examples: RUN/head is the final model"
