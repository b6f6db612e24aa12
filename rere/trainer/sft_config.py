"""`SFTConfig`, the settings of `rere.trainer.sft.train_sft`, apart from the trainer so that
`rere sft`'s flags are built from it without importing torch (which every `rere` call would
then pay). The fields every trainer shares are `run_settings.py`'s; this adds SFT's own and
sets SFT's defaults."""
from __future__ import annotations

from dataclasses import dataclass

from rere.trainer.config import setting
from rere.trainer.run_settings import BEST_METRIC, FineTuningSettings


@dataclass
class SFTConfig(FineTuningSettings):
    epochs: int = setting("passes over the training examples", default=3)
    batch_size: int = setting("sequences per micro-batch on each rank", default=8)
    grad_accum: int = setting("micro-batches per optimizer step", default=1)
    lr: float = setting("peak learning rate (full fine-tuning of ~135M: 1e-4..3e-4; LoRA: 3e-4..1e-3)", default=1e-4)
    eval_every: int = setting("validate every N optimizer steps (0 = only at the end)", default=200)
    eval_beams: int = setting("beams at validation", default=20)
    patience: int = setting(f"stop after this many validations without a better {BEST_METRIC} (0 = never)",
                            default=3)
    save_every: int = setting("checkpoint every N optimizer steps (and always at the end)", default=500)
