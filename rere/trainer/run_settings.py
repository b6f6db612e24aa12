"""The settings every trainer here shares, written once.

`RunSettings` holds what any training run has (`rere.trainer.training_run.TrainingRun` reads
the running part): the learning rate, LoRA, which rows it trains and validates on, and how
it validates, checkpoints, seeds and runs. `FineTuningSettings` adds what the trainers that
update the LLM itself under torchrun share (SFT, the GRPO loop): the warmup + cosine schedule,
gradient clipping, FSDP. `SFTConfig`, `GRPOSettings` (and so `GRPOConfig`, `Stage2Config`)
and `Stage1Config` extend them; a subclass declares a field again only to change its
default or its help (a dataclass keeps the field where the base put it).

Kept free of torch so that the CLI's flags load fast.
"""
from __future__ import annotations

from dataclasses import dataclass

from rere.trainer.config import setting

BEST_METRIC = "ndcg@10"  # the validation metric that picks best/ and stops early


@dataclass
class RunSettings:
    # optimisation
    lr: float = setting("peak learning rate", default=1e-4)
    weight_decay: float = setting("AdamW weight decay", default=0.0)
    lora_r: int = setting("LoRA rank on every linear layer of the decoder (0 = full fine-tuning)", default=0)
    lora_alpha: int = setting("LoRA alpha", default=32)
    lora_dropout: float = setting("LoRA dropout", default=0.0)
    # data
    max_history: int = setting("history items per prompt (the most recent ones)", default=10)
    max_prompt_tokens: int | None = setting("drop the oldest history items beyond this prompt length", default=None)
    evaluated_split: str = setting("the split the model will be tested on (never trained on)", default="test")
    train_examples: int | None = setting("train on a seeded random sample of this many training examples "
                                         "(None: all of them)", default=None)
    # validation, checkpoints, running
    eval_every: int = setting("validate every N steps (0 = only at the end)", default=200)
    eval_examples: int = setting("validation examples per evaluation, a seeded random subset (0 = no validation: "
                                 "best/ is the final model)", default=200)
    patience: int = setting(f"stop after this many validations without a better {BEST_METRIC} (0 = never)",
                            default=0)
    save_every: int = setting("checkpoint every N steps (and always at the end)", default=500)
    keep_checkpoints: int = setting("checkpoints kept", default=2)
    seed: int = setting("seed of the data order, sampling, the LoRA initialisation, the training sample and the "
                        "validation subset", default=0)
    device: str | None = setting("cpu / cuda (default: cuda when present)", default=None)
    bf16: bool | None = setting("bfloat16 autocast, fp32 weights (default: on with CUDA)", default=None)


@dataclass
class FineTuningSettings(RunSettings):
    max_steps: int | None = setting("run at most this many optimizer steps: the warmup and cosine decay span them, "
                                    "or `epochs` when those make fewer steps", default=None)
    warmup_ratio: float = setting("share of the optimizer steps warming up linearly", default=0.03)
    max_grad_norm: float = setting("gradient clipping by global norm", default=1.0)
    fsdp: bool = setting("under torchrun, shard the model over the ranks with FSDP2 (models that do not fit one "
                         "device) instead of a DDP replica per rank; not with LoRA", default=False)


def check_run_settings(settings: RunSettings) -> None:
    """Errors naming the setting for values no run can use."""
    name = type(settings).__name__
    for field in ("save_every", "keep_checkpoints"):
        if getattr(settings, field) < 1:
            raise ValueError(f"{name}.{field} must be >= 1, got {getattr(settings, field)}")
    for field in ("eval_every", "eval_examples", "patience", "lora_r"):
        if getattr(settings, field) < 0:
            raise ValueError(f"{name}.{field} must be >= 0, got {getattr(settings, field)}")
    max_steps = getattr(settings, "max_steps", None)
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"{name}.max_steps must be >= 1 or None, got {max_steps}")
    if getattr(settings, "fsdp", False) and settings.lora_r:
        raise ValueError(f"{name}: fsdp and lora_r together are not supported: LoRA trains few weights, use DDP")
