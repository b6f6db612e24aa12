"""`SFTConfig`, the settings of `rere.trainer.sft.train_sft`, apart from the trainer so that
`rere sft`'s flags are built from it without importing torch (which every `rere` call would
then pay)."""
from __future__ import annotations

from dataclasses import dataclass

from rere.trainer.config import setting

BEST_METRIC = "ndcg@10"  # the validation metric that picks the best model and stops early


@dataclass
class SFTConfig:
    # optimisation
    epochs: int = setting("passes over the training examples", default=3)
    batch_size: int = setting("sequences per micro-batch on each rank", default=8)
    grad_accum: int = setting("micro-batches per optimizer step", default=1)
    lr: float = setting("peak learning rate (full fine-tuning of ~135M: 1e-4..3e-4; LoRA: 3e-4..1e-3)", default=1e-4)
    warmup_ratio: float = setting("share of the optimizer steps warming up linearly", default=0.03)
    weight_decay: float = setting("AdamW weight decay", default=0.0)
    max_grad_norm: float = setting("gradient clipping by global norm", default=1.0)
    max_steps: int | None = setting("run at most this many optimizer steps: the warmup and cosine decay span "
                                  "them, or `epochs` when those make fewer steps", default=None)
    lora_r: int = setting("LoRA rank on every linear layer of the decoder (0 = full fine-tuning)", default=0)
    lora_alpha: int = setting("LoRA alpha", default=32)
    lora_dropout: float = setting("LoRA dropout", default=0.0)
    fsdp: bool = setting("under torchrun, shard the model over the ranks with FSDP2 (models that do not fit one "
                       "device) instead of a DDP replica per rank; not with LoRA", default=False)
    # data
    max_history: int = setting("history items per prompt (the most recent ones)", default=10)
    max_prompt_tokens: int | None = setting("drop the oldest history items beyond this prompt length", default=None)
    evaluated_split: str = setting("the split the model will be tested on (never trained on)", default="test")
    train_examples: int | None = setting("train on a seeded random sample of this many training examples "
                                       "(None: all of them)", default=None)
    # validation and early stopping
    eval_every: int = setting("validate every N optimizer steps (0 = only at the end)", default=200)
    eval_examples: int = setting("validation examples per evaluation (a fixed random subset)", default=200)
    eval_beams: int = setting("beams at validation", default=20)
    patience: int = setting(f"stop after this many evaluations without a better {BEST_METRIC} (0 = never)", default=3)
    # running
    save_every: int = setting("checkpoint every N optimizer steps (and always at the end)", default=500)
    keep_checkpoints: int = setting("checkpoints kept", default=2)
    seed: int = setting("seed of the data order, the LoRA initialisation, the training sample and the validation "
                        "subset", default=0)
    device: str | None = setting("cpu / cuda (default: cuda when present)", default=None)
    bf16: bool | None = setting("bfloat16 autocast, fp32 weights (default: on with CUDA)", default=None)
