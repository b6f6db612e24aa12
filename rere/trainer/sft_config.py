"""`SFTConfig`, the settings of `rere.trainer.sft.train_sft`, apart from the trainer so that
`rere sft`'s flags are built from it without importing torch (which every `rere` call would
then pay)."""
from __future__ import annotations

from dataclasses import dataclass, field

BEST_METRIC = "ndcg@10"  # the validation metric that picks the best model and stops early


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class SFTConfig:
    # optimisation
    epochs: int = _help("passes over the training examples", default=3)
    batch_size: int = _help("sequences per micro-batch on each rank", default=8)
    grad_accum: int = _help("micro-batches per optimizer step", default=1)
    lr: float = _help("peak learning rate (full fine-tuning of ~135M: 1e-4..3e-4; LoRA: 3e-4..1e-3)", default=1e-4)
    warmup_ratio: float = _help("share of the optimizer steps warming up linearly", default=0.03)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    max_grad_norm: float = _help("gradient clipping by global norm", default=1.0)
    max_steps: int | None = _help("stop after this many optimizer steps (the schedule still spans `epochs`)",
                                  default=None)
    lora_r: int = _help("LoRA rank on the attention and MLP projections (0 = full fine-tuning)", default=0)
    lora_alpha: int = _help("LoRA alpha", default=32)
    lora_dropout: float = _help("LoRA dropout", default=0.0)
    fsdp: bool = _help("under torchrun, shard the model over the ranks with FSDP2 (models that do not fit one "
                       "device) instead of a DDP replica per rank; not with LoRA", default=False)
    # data
    max_history: int = _help("history items per prompt (the most recent ones)", default=10)
    max_prompt_tokens: int | None = _help("drop the oldest history items beyond this prompt length", default=None)
    evaluated_split: str = _help("the split the model will be tested on (never trained on)", default="test")
    # validation and early stopping
    eval_every: int = _help("validate every N optimizer steps (0 = only at the end)", default=200)
    eval_examples: int = _help("validation examples per evaluation (a fixed random subset)", default=200)
    eval_beams: int = _help("beams at validation", default=20)
    patience: int = _help(f"stop after this many evaluations without a better {BEST_METRIC} (0 = never)", default=3)
    # running
    save_every: int = _help("checkpoint every N optimizer steps (and always at the end)", default=500)
    keep_checkpoints: int = _help("checkpoints kept", default=2)
    seed: int = _help("seed of the data order, the LoRA initialisation and the validation subset", default=0)
    device: str | None = _help("cpu / cuda (default: cuda when present)", default=None)
    bf16: bool | None = _help("bfloat16 autocast, fp32 weights (default: on with CUDA)", default=None)
