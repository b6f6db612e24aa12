"""RPORec's settings: stage 1 (reasoning + RecHead training) and stage 2 (GRPO on the
reasoning with the frozen RecHead's reward). Plain dataclasses, free of torch, so that the
CLI's flags load fast; `rere rporec stage1|stage2 --help` lists them."""
from __future__ import annotations

from dataclasses import dataclass

from rere.trainer.config import setting
from rere.trainer.grpo_config import GRPOSettings
from rere.trainer.run_settings import RunSettings


@dataclass
class Stage1Config(RunSettings):
    # reasoning, generated once per prompt and cached
    reasoning: bool = setting("generate reasoning (off: the head reads the prompt alone, the no-reasoning ablation)",
                              default=True)
    max_new_tokens: int = setting("reasoning length limit, in tokens", default=128)
    reasoning_temperature: float = setting("sampling temperature of the reasoning (0 = greedy)", default=0.7)
    top_p: float = setting("nucleus sampling of the reasoning", default=0.95)
    generation_batch: int = setting("prompts per generate call", default=16)
    # the head
    dim: int = setting("RecHead's user/item space", default=256)
    pooling: str = setting('user state: "last" token of prompt + reasoning, or "mean" over the reasoning', default="last")
    temperature: float = setting("softmax temperature of the cosine scores", default=0.07)
    learn_temperature: bool = setting("learn the temperature", default=False)
    item_residual: bool = setting("a learned per-item residual on the LLM's item encodings", default=True)
    # training (the shared fields: rere/trainer/run_settings.py)
    epochs: int = setting("passes over the training examples (a step of this run is an epoch)", default=20)
    batch_size: int = setting("examples per optimizer step (their targets are each other's in-batch negatives)",
                              default=128)
    lr: float = setting("AdamW learning rate of the head", default=1e-3)
    random_negatives: int = setting("uniformly drawn negative items per step, shared by the batch", default=512)
    lora_r: int = setting("LoRA rank on the LLM, trained with the head (0 = frozen LLM: user states cached once)",
                          default=0)
    lora_lr: float = setting("learning rate of the LoRA adapters", default=1e-4)
    # running
    eval_every: int = setting("validate every N epochs (0 = only at the end)", default=1)
    eval_examples: int = setting("validation examples (0 = none: the last epoch's head is kept)", default=500)
    patience: int = setting("stop after this many validations without a better ndcg@10 (0 = never)", default=5)
    save_every: int = setting("checkpoint every N epochs (and always at the end)", default=1)
    bf16: bool | None = setting("bfloat16 autocast of the LLM (default: on with CUDA)", default=None)


@dataclass
class Stage2Config(GRPOSettings):
    """GRPO on the reasoning text; the reward comes from the frozen RecHead."""

    num_generations: int = setting("G: reasonings sampled per prompt", default=8)
    rollout_batch: int = setting("prompts per generate call", default=8)
    temperature: float = setting("sampling temperature of the reasoning (the log-probs use it too)", default=1.0)
    top_p: float = setting("nucleus sampling of the reasoning", default=1.0)
    max_new_tokens: int = setting("reasoning length limit, in tokens", default=128)
    format_check: bool = setting("reward only well-formed reasonings (off: score every reasoning, for small models "
                               "that rarely follow the format)", default=True)
    ndcg_weight: float = setting("reward weight on the RecHead's NDCG of the target (over the whole catalog)",
                               default=1.0)
    ndcg_k: int | None = setting("cut the NDCG at this rank (None: untruncated, 1/log2(rank + 2))", default=None)
    hit_bonus: float = setting("shaping: added when the target is in the head's top hit_k", default=0.0)
    hit_k: int = setting("the top-k of hit_bonus", default=10)
    length_cost: float = setting("shaping: minus this times the share of max_new_tokens the reasoning uses",
                                  default=0.0)
    eval_k: int = setting("items ranked per validation example", default=50)
    lr: float = setting("peak learning rate", default=1e-6)
