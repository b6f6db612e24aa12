"""GRPO settings, as dataclasses of plain defaults (the ReRe reference setup where it has one).

`GRPOSettings` holds what every GRPO trainer here shares (the objective, optimisation,
data and running: `grpo_loop.GRPOLoop`); `GRPOConfig` adds ReRe's rollouts and rewards
(`grpo.GRPOTrainer`), `rere.rporec.stage2.Stage2Config` RPORec's.

Kept free of torch so that `rere --help` and the CLI's flags load fast.
"""
from __future__ import annotations

from dataclasses import dataclass

from rere.trainer.config import setting

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
REWARD_NAMES = ("rule", "ranking")


@dataclass
class GRPOSettings:
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
    # optimisation
    lr: float = setting("peak learning rate (ReRe: 1e-5)", default=1e-5)
    warmup_ratio: float = setting("share of optimizer steps warming up linearly", default=0.03)
    weight_decay: float = setting("AdamW weight decay", default=0.0)
    max_grad_norm: float = setting("gradient clipping (ReRe: 0.3)", default=0.3)
    epochs: float = setting("passes over the training prompts (ReRe: 2)", default=2.0)
    max_steps: int | None = setting("stop after this many steps (overrides epochs)", default=None)
    lora_r: int = setting("LoRA rank (0 = full fine-tuning); the reference is then the adapter-disabled base",
                        default=0)
    lora_alpha: int = setting("LoRA alpha", default=32)
    fsdp: bool = setting("under torchrun, shard the model over the ranks with FSDP2 (models that do not fit one "
                       "device) instead of a DDP replica per rank; not with LoRA", default=False)
    # data
    max_history: int = setting("history items per prompt", default=10)
    max_prompt_tokens: int | None = setting("drop the oldest history items beyond this prompt length", default=None)
    evaluated_split: str = setting("the split the model will be tested on (never trained on)", default="test")
    train_examples: int | None = setting("train on a seeded random sample of this many training examples "
                                       "(None: all of them)", default=None)
    # running
    eval_every: int = setting("validate every N steps (0 = only at the end)", default=50)
    eval_examples: int = setting("validation examples per evaluation", default=200)
    save_every: int = setting("checkpoint every N steps", default=50)
    keep_checkpoints: int = setting("checkpoints kept", default=2)
    seed: int = setting("seed for data order and sampling", default=0)
    device: str | None = setting("cpu / cuda (default: cuda when present)", default=None)
    bf16: bool | None = setting("bfloat16 autocast (default: on with CUDA)", default=None)


@dataclass
class GRPOConfig(GRPOSettings):
    """ReRe: constrained beam-search rollouts over the catalog, rule + ranking rewards."""

    rollout: str = setting('"beam" (constrained beam search, ReRe) or "sample" (G independent draws)', default="beam")
    temperature: float = setting("sampling temperature (rollout \"sample\" only)", default=1.0)
    exclude_history: bool = setting("never roll out an item of the user's history", default=False)
    rewards: tuple[str, ...] = setting(f"reward functions, summed: any of {REWARD_NAMES}", default=("rule", "ranking"))
    eval_beams: int = setting("beams at validation", default=20)
