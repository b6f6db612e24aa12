"""The GRPO loop every trainer here shares: rollouts in, advantages, a prefix-shared update.

A trainer (ReRe's `grpo.GRPOTrainer`, RPORec's `rere.rporec.stage2.Stage2Trainer`) says how
to roll out and reward a step's prompts (`rollout`) and how to validate (`validate`); this
class does the rest, the same way for both:

1. this rank's share of the step's prompts (`step_examples`: an epoch's order is seeded, so
   a resumed run sees the prompts an uninterrupted one does);
2. the trainer's `Rollout`: each prompt's tokens, G completions, their rewards;
3. group advantages `(r - mean_G) / (std_G + 1e-4)`;
4. the update: the groups packed with their prompt once (`packed_logprobs.py`), the
   reference (and, with several passes, the old policy) scored without gradient the same
   way, then `num_iterations` optimizer steps, micro-batch by micro-batch (`grpo_loss.py`);
5. the run around the steps, as for every trainer here (`training_run.TrainingRun`):
   metrics, periodic validation (the best model by validation NDCG@10 in best/, early
   stopping with `patience`), atomic checkpoints and an exact `resume`, the metrics plot.

The reference is a frozen copy of the starting model, or with LoRA the adapter-disabled
base; `ref_sync_every` soft-updates the copy towards the policy.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field

import torch

from rere.trainer.checkpoint import save_pretrained
from rere.distributed import Distributed, lockstep, no_sync, shard, unwrap, wrap_model
from rere.trainer.grpo_config import LOSS_TYPES, GRPOSettings
from rere.trainer.grpo_loss import grpo_loss
from rere.trainer.lora import with_lora
from rere.trainer.metrics_log import DEFAULT_PANELS
from rere.trainer.packed_logprobs import CompletionScorer, pack_groups
from rere.trainer.rewards import group_advantages
from rere.trainer.training_run import RESUMABLE, TrainingRun


@dataclass
class Rollout:
    """One step's rollouts on this rank: P prompts x G completions."""

    prompts: list[torch.Tensor]  # P 1-D int64 token ids, unpadded
    completions: torch.Tensor  # int64 [P, G, T], padding after each completion's length
    lengths: torch.Tensor  # int64 [P, G]: tokens of each completion (0 = empty slot, no loss)
    rewards: torch.Tensor  # float32 [P, G]
    metrics: dict = field(default_factory=dict)  # the trainer's own step metrics (floats)

    @property
    def valid(self) -> torch.Tensor:
        return self.lengths > 0


class GRPOLoop:
    """`run()` does the steps, `step()` one of them; subclasses define `rollout`,
    `validate`, `max_completion_length` and may set `panels` (metrics.png). The run itself
    (folder, resume, validation -> best/, checkpoints) is `self.training`'s."""

    name, unit = "GRPO", "step"
    panels = DEFAULT_PANELS
    shown = {"reward": ".3f", "kl": ".2e"}
    # A GRPO run may be extended on resume (more steps or epochs; the cosine then spans the new length).
    resumable = RESUMABLE + ("max_steps", "epochs")

    def __init__(self, model, tokenizer, examples: list, valid: list, config: GRPOSettings, run_dir, *,
                 dist: Distributed | None = None, progress: bool = True, temperature: float = 1.0):
        if config.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {config.loss_type!r}")
        if not examples:
            raise ValueError("no training examples")
        self.training = TrainingRun(run_dir, config, dist=dist, progress=progress, resumable=self.resumable)
        self.config, self.dist, self.device, self.tokenizer = config, self.training.dist, self.training.device, tokenizer
        if config.fsdp and config.prompts_per_step % self.dist.world_size:
            # sharded forwards are collectives: every rank must update the same number of groups
            raise ValueError(f"fsdp needs prompts_per_step ({config.prompts_per_step}) divisible by the "
                             f"{self.dist.world_size} ranks")
        if config.lora_r:
            model = with_lora(model, config)
        self.model = model.to(self.device)
        self.examples, self.valid = examples, valid
        self.reference = None
        if config.beta and not config.lora_r:
            self.reference = CompletionScorer(copy.deepcopy(self.model).requires_grad_(False).eval(), temperature)
            if config.fsdp and self.dist.enabled:
                shard(self.reference)
        # log-probs at the rollouts' sampling temperature (1 for beam search): the ratio's old policy
        self.policy = wrap_model(CompletionScorer(self.model, temperature), self.dist, fsdp=config.fsdp)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=config.lr,
                                           weight_decay=config.weight_decay)
        from transformers import get_cosine_schedule_with_warmup
        updates = self.total_steps * config.num_iterations
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, math.ceil(config.warmup_ratio * updates), updates)
        self.step_index = 0

    # -- what a trainer defines --------------------------------------------------------------

    def rollout(self, examples: list) -> Rollout:
        raise NotImplementedError

    def validate(self) -> dict | None:
        """Validation metrics (with "ndcg@10", which picks best/), or None without validation."""
        raise NotImplementedError

    @property
    def max_completion_length(self) -> int:
        """The longest completion a rollout can make (dr_grpo's constant denominator)."""
        raise NotImplementedError

    # -- data --------------------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.examples) // self.config.prompts_per_step)

    @property
    def total_steps(self) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        return max(1, int(self.config.epochs * self.steps_per_epoch))

    def step_examples(self, step: int) -> list:
        """This rank's prompts of step `step`: epoch e's order is a permutation seeded by
        (seed, e), so a resumed run sees the same prompts as an uninterrupted one."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = list(range(len(self.examples)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        size = self.config.prompts_per_step
        chosen = [self.examples[i] for i in order[position * size:(position + 1) * size]]
        return self.dist.shard(chosen)

    # -- one step -----------------------------------------------------------------------------

    def step(self) -> dict:
        examples = self.step_examples(self.step_index)
        started = time.perf_counter()
        rollout = self.rollout(examples)
        rollout_s = time.perf_counter() - started
        rewards, valid, lengths = rollout.rewards, rollout.valid, rollout.lengths
        advantages = group_advantages(rewards, valid)
        lr = self.scheduler.get_last_lr()[0]  # the rate this step's update uses
        started = time.perf_counter()
        update = self._update(rollout.prompts, rollout.completions, lengths, advantages)
        update_s = time.perf_counter() - started
        metrics = {
            "reward": float(rewards[valid].mean()), "reward_std": float(rewards[valid].std()) if valid.sum() > 1 else 0.0,
            **rollout.metrics, "completion_length": float(lengths[valid].float().mean()), "lr": lr,
            "rollout_s": rollout_s, "update_s": update_s, **update,
        }
        self.step_index += 1
        return self.dist.mean(metrics)

    def _update(self, prompts, completions, lengths, advantages) -> dict:
        cfg = self.config
        pad = self.tokenizer.pad_token_id or 0
        chunks = []  # (packed batch, advantages of its completions)
        for start in range(0, len(prompts), cfg.micro_batch):
            stop = start + cfg.micro_batch
            packed = pack_groups(prompts[start:stop], completions[start:stop], lengths[start:stop], pad_token_id=pad,
                                 share_prompt=cfg.prefix_sharing).to(self.device)
            chunks.append((packed, advantages[start:stop].reshape(-1)))
        with torch.no_grad(), self.autocast():
            refs = [self._reference_logprobs(p) for p, _ in chunks] if cfg.beta else [None] * len(chunks)
            olds = [self.policy(p).detach() for p, _ in chunks] if cfg.num_iterations > 1 else [None] * len(chunks)
        sequences = int((lengths > 0).sum())
        tokens = int(lengths.sum())
        tokens_in_step = int(self.dist.sum(tokens))
        totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0}
        scale_dapo = self.dist.world_size  # DDP averages gradients over ranks; dapo's denominator is global
        for _ in range(cfg.num_iterations):
            for i, ((packed, adv), ref, old) in enumerate(zip(chunks, refs, olds)):
                sync = i == len(chunks) - 1
                with (contextlib.nullcontext() if sync else no_sync(self.policy)), self.autocast():
                    logprobs = self.policy(packed)
                    parts = grpo_loss(logprobs, packed.sequence, adv, old_logprobs=old, ref_logprobs=ref,
                                      beta=cfg.beta, epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
                                      loss_type=cfg.loss_type, num_sequences=sequences,
                                      max_completion_length=self.max_completion_length, tokens_in_step=tokens_in_step)
                    loss = parts.loss * (scale_dapo if cfg.loss_type == "dapo" else 1)
                    if cfg.loss_type in ("bnpo", "dr_grpo"):
                        loss = loss / len(chunks)
                    loss.backward()
                weight = parts.tokens / max(tokens, 1)
                totals["loss"] += parts.loss.item() / cfg.num_iterations
                totals["kl"] += parts.kl * weight / cfg.num_iterations
                totals["clip_fraction"] += parts.clip_fraction * weight / cfg.num_iterations
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            totals["grad_norm"] += float(norm) / cfg.num_iterations
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._maybe_sync_reference()
        totals["tokens"] = tokens
        return totals

    def lockstep(self):
        """The context for this rank's own forwards of the LLM (rollouts, validation):
        `distributed.lockstep` when the model is sharded, else nothing."""
        return lockstep(self.policy, self.dist)

    def autocast(self):
        return self.training.autocast()

    def frozen_model(self):
        """A context giving the model the reference scores with: the frozen copy, or (LoRA)
        the policy's base with its adapters disabled. None without a reference."""
        if self.reference is not None:
            return contextlib.nullcontext(self.reference.model)
        if self.config.lora_r:
            @contextlib.contextmanager
            def base():
                with unwrap(self.model).disable_adapter():
                    yield unwrap(self.model)
            return base()
        return contextlib.nullcontext(None)

    def _reference_logprobs(self, packed):
        if self.reference is not None:
            return self.reference(packed)
        with unwrap(self.model).disable_adapter():  # LoRA: the base model is the reference
            return unwrap(self.policy)(packed)

    def _maybe_sync_reference(self) -> None:
        cfg = self.config
        if self.reference is None or not cfg.ref_sync_every or (self.step_index + 1) % cfg.ref_sync_every:
            return
        with torch.no_grad():
            for ref, cur in zip(self.reference.model.parameters(), unwrap(self.model).parameters()):
                ref.mul_(1 - cfg.ref_sync_alpha).add_(cur.detach().to(ref.dtype), alpha=cfg.ref_sync_alpha)

    # -- the run (training_run.Trainer) ---------------------------------------------------------

    def run(self, resume: bool = False) -> dict:
        """Train to the end; `TrainingRun.train`'s result ({"steps", "best", ...})."""
        return self.training.train(self, resume)

    def checkpointed(self) -> dict:
        return {"model": unwrap(self.model), "optimizer": self.optimizer, "scheduler": self.scheduler,
                "extra_models": self._drifting_reference()}

    def data_state(self) -> dict:
        return {"step": self.step_index}

    def restore(self, step: int, data_state: dict) -> None:
        self.step_index = step

    def save_best(self) -> None:
        save_pretrained(unwrap(self.model), self.tokenizer, self.training.best_dir)  # every rank (FSDP gathers)

    def _drifting_reference(self) -> dict:
        """The reference must be checkpointed only when soft syncs move it away from --model."""
        if self.reference is not None and self.config.ref_sync_every:
            return {"reference": self.reference.model}
        return {}


def concat_padded(parts: list[torch.Tensor], pad: int) -> torch.Tensor:
    """[P_i, G, T_i] tensors -> [sum P_i, G, max T_i]."""
    width = max(p.shape[2] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[2]), value=pad) for p in parts])
