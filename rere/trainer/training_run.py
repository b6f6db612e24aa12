"""One training run in its folder: the same life for every trainer here.

A trainer (SFT, the GRPO loop of ReRe and RPORec stage 2, RPORec stage 1) supplies its step
and its validation, as the `Trainer` protocol below says; `TrainingRun` does the rest:

- the folder: a folder that holds a run (a config.yaml, metrics or a checkpoint) is refused
  unless resuming, a resume with nothing to continue is refused too (a run killed before
  its first checkpoint starts over); config.yaml, written when the run claims the folder; every step's metrics in metrics.jsonl and TensorBoard (`MetricsLog`); the
  plot metrics.png at the end;
- the device (CUDA when present) and bf16 autocast (on with CUDA; weights stay fp32, since
  AdamW's 1e-5-sized updates would round away in bf16 weights); the seed, set before the
  trainer builds anything (LoRA's initialisation);
- resume: the weights, optimizer, schedule, RNGs and the trainer's data position from the
  latest checkpoint; settings other than the checkpoint's are refused, naming them, except
  those in `resumable` (they do not change what a step does); what the interrupted run
  logged after its checkpoint is dropped;
- every `eval_every` steps and at the end: validation, best/ by ndcg@10, early stopping
  after `patience` validations without a better one (`validation.record_validation`);
  without validation, best/ is the final model;
- every `save_every` steps and at the end: an atomic checkpoint, the oldest pruned
  (`checkpoint.py`).

Under torchrun every rank calls `train`: checkpoints and best/ are collective (FSDP
gathers), files are written by rank 0.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from rere.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rere.trainer.config import config_to_dict, save_config
from rere.distributed import Distributed
from rere.trainer.metrics_log import MetricsLog, plot_metrics
from rere.trainer.run_settings import BEST_METRIC, RunSettings, check_run_settings
from rere.trainer.validation import record_validation

# Settings that may change when resuming: they do not alter the weights a step produces.
RESUMABLE = ("eval_every", "eval_examples", "eval_beams", "patience", "save_every", "keep_checkpoints", "device")


class Trainer(Protocol):
    """What a trainer gives its `TrainingRun`."""

    name: str  # the progress bar's label
    unit: str  # what one step is ("step", "epoch"): the key of the step in "best"
    panels: tuple[tuple[str, str], ...]  # the (split, metric) curves of metrics.png
    shown: dict[str, str]  # metric -> format, shown on the progress bar

    @property
    def total_steps(self) -> int: ...

    def checkpointed(self) -> dict:
        """`save_checkpoint`/`load_checkpoint` keywords: model, optimizer, scheduler, extra_models."""

    def data_state(self) -> dict:
        """Where the trainer is in its data (JSON), saved with each checkpoint."""

    def restore(self, step: int, data_state: dict) -> None:
        """Continue after `step` from a checkpoint's `data_state` (its weights are loaded)."""

    def step(self) -> dict:
        """One training step; its metrics (floats, the same keys on every rank)."""

    def validate(self) -> dict | None:
        """Validation metrics with BEST_METRIC, or None without validation examples."""

    def save_best(self) -> None:
        """Keep the model as it is now as the run's best (`TrainingRun.best_dir` for an LLM;
        called on every rank)."""


class TrainingRun:
    def __init__(self, run_dir, settings: RunSettings, *, dist: Distributed | None = None, progress: bool = True,
                 resumable: tuple[str, ...] = RESUMABLE):
        check_run_settings(settings)
        self.dir, self.settings, self.resumable = Path(run_dir), settings, resumable
        cuda = torch.cuda.is_available()
        self.dist = dist or Distributed(device=torch.device(settings.device or ("cuda" if cuda else "cpu")))
        self.device = self.dist.device
        self.use_bf16 = settings.bf16 if settings.bf16 is not None else self.device.type == "cuda"
        self.progress = progress and self.dist.is_main
        self.step = 0
        # Checkpointed with the run: early stopping (record_validation) and the last validation.
        self.state = {"best": None, "bad_evals": 0, "stopped_early": False, "final": None}
        self._claimed = None  # (resume, checkpoint) once claim_folder has looked
        torch.manual_seed(settings.seed)

    @property
    def best_dir(self) -> Path:
        return self.dir / "best"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def train(self, trainer: Trainer, resume: bool = False) -> dict:
        """Run `trainer` to its end (or early stop). Returns {"steps", "stopped_early", "best":
        {unit: step, metrics...} (the step best/ holds), "final": the last validation's
        metrics or None}."""
        checkpoint = self.claim_folder(resume)
        if checkpoint is not None:
            self._restore(trainer, checkpoint)
        total = trainer.total_steps
        log = MetricsLog(self.dir, enabled=self.dist.is_main, resume_step=self.step if resume else None)
        bar = tqdm(total=total, initial=min(self.step, total), desc=trainer.name, unit=trainer.unit,
                   disable=not self.progress)
        try:
            while self.step < total and not self.state["stopped_early"]:
                metrics = trainer.step()
                self.step += 1
                log.log(self.step, metrics)
                bar.set_postfix({name: f"{metrics[name]:{form}}" for name, form in trainer.shown.items()})
                bar.update(1)
                finished = self.step >= total
                if (self.settings.eval_every and self.step % self.settings.eval_every == 0) or finished:
                    self._validate(trainer, log)
                if self.step % self.settings.save_every == 0 or finished or self.state["stopped_early"]:
                    self._save(trainer)
            # The last step validated and saved above; a run resumed after its end only returns.
            if self.state["best"] is None:  # never validated: best/ is the final model
                trainer.save_best()
                self.state["best"] = {trainer.unit: self.step}
        finally:
            bar.close()
            log.close()
        self.dist.barrier()
        if self.dist.is_main:
            plot_metrics(self.dir / "metrics.jsonl", self.dir / "metrics.png", trainer.panels)
        return {"steps": self.step, "stopped_early": self.state["stopped_early"], "best": self.state["best"],
                "final": self.state["final"]}

    def claim_folder(self, resume: bool) -> Path | None:
        """Refuse a folder this run may not use, else create it; the checkpoint to resume
        from, if any. `train` calls it; a trainer that writes into the folder while it is
        built (stage 1's caches) calls it first."""
        if self._claimed is not None:
            if self._claimed[0] != resume:
                raise ValueError(f"{self.dir} was claimed with resume={self._claimed[0]}, not {resume}")
            return self._claimed[1]
        checkpoint = latest_checkpoint(self.dir)
        # config.yaml is written when a run claims its folder: a run killed before its first
        # checkpoint or metric (stage 1 generating its reasonings) resumes from the start.
        begun = checkpoint is not None or any((self.dir / name).exists() for name in ("metrics.jsonl", "config.yaml"))
        if begun and not resume:
            raise FileExistsError(f"{self.dir} holds a training run: resume it (--resume) or choose another folder")
        if resume and not begun:
            raise FileNotFoundError(f"resume: {self.dir} has no checkpoint to continue from")
        # Every rank looks at the folder before rank 0 writes into it (else a slower rank
        # finds rank 0's fresh metrics.jsonl and refuses the run).
        self.dist.barrier()
        if self.dist.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_config(self.settings, self.dir / "config.yaml")
        self._claimed = (resume, checkpoint)
        return checkpoint

    def _restore(self, trainer: Trainer, checkpoint: Path) -> None:
        loaded = load_checkpoint(checkpoint, **trainer.checkpointed())
        self._check_settings(loaded["config"], checkpoint)
        trainer.restore(loaded["step"], loaded["data_state"])
        self.step = loaded["step"]
        self.state.update(loaded["extra"] or {})

    def _check_settings(self, saved: dict | None, checkpoint: Path) -> None:
        """Resuming with other settings would not continue the same run: refuse, naming them."""
        now, saved = config_to_dict(self.settings), saved or {}
        defaults = config_to_dict(type(self.settings)())  # a field newer than the checkpoint: its default

        def before(name: str):
            return saved[name] if name in saved else defaults[name]

        changed = sorted(f.name for f in dataclasses.fields(self.settings)
                         if f.name not in self.resumable and before(f.name) != now[f.name])
        if changed:
            raise ValueError(f"{checkpoint} was trained with other settings ({', '.join(changed)} differ); "
                             f"resume with its config.yaml or start another run folder")

    def _validate(self, trainer: Trainer, log: MetricsLog) -> None:
        metrics = trainer.validate()
        if metrics is None:
            return
        log.log(self.step, metrics, split="valid")
        self.state["final"] = metrics
        if record_validation(self.state, metrics, {trainer.unit: self.step}, self.settings.patience, BEST_METRIC):
            trainer.save_best()  # every rank: a sharded model is gathered

    def _save(self, trainer: Trainer) -> None:
        save_checkpoint(self.dir, step=self.step, **trainer.checkpointed(), data_state=trainer.data_state(),
                        config=config_to_dict(self.settings), extra=self.state, keep=self.settings.keep_checkpoints)


def describe_best(result: dict, unit: str = "step", kept: str = "best/") -> str:
    """How a run's best model (`kept`) was chosen, for the commands' closing line."""
    best = result["best"]
    if best is None or BEST_METRIC not in best:
        return f"no validation examples: {kept} is the final model"
    stopped = "stopped early; " if result.get("stopped_early") else ""
    return f"{stopped}best validation {BEST_METRIC} {best[BEST_METRIC]:.4f} at {unit} {best[unit]}"
