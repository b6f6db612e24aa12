"""GRPO settings, as dataclasses of plain defaults (the ReRe reference setup where it has one).

`GRPOSettings` holds what every GRPO trainer here shares (rollout sizes, the objective, the
reference: `grpo_loop.GRPOLoop`) on top of what every trainer shares (`run_settings.py`);
`GRPOConfig` adds ReRe's rollouts and rewards (`grpo.GRPOTrainer`),
`rere.rporec.stage2.Stage2Config` RPORec's.

Kept free of torch so that `rere --help` and the CLI's flags load fast.
"""
from __future__ import annotations

from dataclasses import dataclass

from rere.trainer.config import setting
from rere.trainer.run_settings import FineTuningSettings

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
REWARD_NAMES = ("rule", "ranking")


@dataclass
class GRPOSettings(FineTuningSettings):
    # rollouts
    num_generations: int = setting("G: completions per prompt", default=16)
    prompts_per_step: int = setting("prompts per step over all ranks (ReRe: 32)", default=32)
    rollout_batch: int = setting("prompts per rollout call", default=16)
    # objective
    loss_type: str = setting(f"one of {LOSS_TYPES}", default="grpo")
    epsilon_low: float = setting("ratio clip below 1", default=0.2)
    epsilon_high: float = setting("ratio clip above 1 (DAPO uses 0.28)", default=0.2)
    beta: float = setting("k3 KL weight to the reference model (0 = no reference)", default=1e-3)
    # The ReRe code trains with TRL's sync_ref_model at TRL's defaults: every 512 steps, alpha 0.6.
    ref_sync_every: int = setting("soft-update the reference every N steps (0 = never; ReRe: 512)", default=512)
    ref_sync_alpha: float = setting("ref <- alpha * policy + (1 - alpha) * ref at each sync", default=0.6)
    num_iterations: int = setting("optimizer passes over each rollout batch", default=1)
    micro_batch: int = setting("groups per forward/backward", default=2)
    prefix_sharing: bool = setting("run each prompt once for its whole group (off: one row per completion)",
                                   default=True)
    # optimisation (the shared fields: run_settings.py)
    epochs: float = setting("passes over the training prompts (ReRe: 2)", default=2.0)
    lr: float = setting("peak learning rate (ReRe: 1e-5)", default=1e-5)
    max_grad_norm: float = setting("gradient clipping by global norm (ReRe: 0.3)", default=0.3)
    lora_r: int = setting("LoRA rank (0 = full fine-tuning); the reference is then the adapter-disabled base",
                          default=0)
    # running
    eval_every: int = setting("validate every N steps (0 = only at the end)", default=50)
    save_every: int = setting("checkpoint every N steps (and always at the end)", default=50)


@dataclass
class GRPOConfig(GRPOSettings):
    """ReRe: constrained beam-search rollouts over the catalog, rule + ranking rewards."""

    rollout: str = setting('"beam" (constrained beam search, ReRe) or "sample" (G independent draws)', default="beam")
    temperature: float = setting("sampling temperature (rollout \"sample\" only)", default=1.0)
    exclude_history: bool = setting("never roll out an item of the user's history", default=False)
    rewards: tuple[str, ...] = setting(f"reward functions, summed: any of {REWARD_NAMES}", default=("rule", "ranking"))
    eval_beams: int = setting("beams at validation", default=20)
