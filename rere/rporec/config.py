"""RPORec's settings: stage 1 (reasoning + RecHead training) and stage 2 (GRPO on the
reasoning with the frozen RecHead's reward). Plain dataclasses, free of torch, so that the
CLI's flags load fast; `rere rporec stage1|stage2 --help` lists them."""
from __future__ import annotations

from dataclasses import dataclass, field

from rere.trainer.grpo_config import GRPOSettings


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class Stage1Config:
    # reasoning, generated once per prompt and cached
    reasoning: bool = _help("generate reasoning (off: the head reads the prompt alone, the no-reasoning ablation)",
                            default=True)
    max_new_tokens: int = _help("reasoning length limit, in tokens", default=128)
    reasoning_temperature: float = _help("sampling temperature of the reasoning (0 = greedy)", default=0.7)
    top_p: float = _help("nucleus sampling of the reasoning", default=0.95)
    generation_batch: int = _help("prompts per generate call", default=16)
    # the head
    dim: int = _help("RecHead's user/item space", default=256)
    pooling: str = _help('user state: "last" token of prompt + reasoning, or "mean" over the reasoning', default="last")
    temperature: float = _help("softmax temperature of the cosine scores", default=0.07)
    learn_temperature: bool = _help("learn the temperature", default=False)
    item_residual: bool = _help("a learned per-item residual on the LLM's item encodings", default=True)
    # training
    epochs: int = _help("passes over the training examples", default=20)
    batch_size: int = _help("examples per step (their targets are each other's in-batch negatives)", default=128)
    lr: float = _help("AdamW learning rate of the head", default=1e-3)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    random_negatives: int = _help("uniformly drawn negative items per step, shared by the batch", default=512)
    lora_r: int = _help("LoRA rank on the LLM, trained with the head (0 = frozen LLM: user states cached once)",
                        default=0)
    lora_alpha: int = _help("LoRA alpha", default=32)
    lora_lr: float = _help("learning rate of the LoRA adapters", default=1e-4)
    max_train_examples: int | None = _help("train on a seeded random sample of this many examples", default=None)
    max_history: int = _help("history items per prompt", default=10)
    max_prompt_tokens: int | None = _help("drop the oldest history items beyond this prompt length", default=None)
    evaluated_split: str = _help("the split the model will be tested on (never trained on)", default="test")
    # running
    eval_every: int = _help("validate every N epochs", default=1)
    eval_examples: int = _help("validation examples (0 = none: the last epoch's head is kept)", default=500)
    patience: int = _help("stop after this many validations without a better NDCG@10 (0 = never)", default=5)
    keep_checkpoints: int = _help("checkpoints kept", default=2)
    seed: int = _help("seed for sampling, negatives and data order", default=0)
    device: str | None = _help("cpu / cuda (default: cuda when present)", default=None)
    bf16: bool | None = _help("bfloat16 autocast of the LLM (default: on with CUDA)", default=None)


@dataclass
class Stage2Config(GRPOSettings):
    """GRPO on the reasoning text; the reward comes from the frozen RecHead."""

    num_generations: int = _help("G: reasonings sampled per prompt", default=8)
    rollout_batch: int = _help("prompts per generate call", default=8)
    temperature: float = _help("sampling temperature of the reasoning (the log-probs use it too)", default=1.0)
    top_p: float = _help("nucleus sampling of the reasoning", default=1.0)
    max_new_tokens: int = _help("reasoning length limit, in tokens", default=128)
    format_check: bool = _help("reward only well-formed reasonings (off: score every reasoning, for small models "
                               "that rarely follow the format)", default=True)
    ndcg_weight: float = _help("reward weight on the RecHead's NDCG of the target (over the whole catalog)",
                               default=1.0)
    ndcg_k: int | None = _help("cut the NDCG at this rank (None: untruncated, 1/log2(rank + 2))", default=None)
    hit_bonus: float = _help("shaping: added when the target is in the head's top hit_k", default=0.0)
    hit_k: int = _help("the top-k of hit_bonus", default=10)
    length_penalty: float = _help("shaping: minus this times the share of max_new_tokens the reasoning uses",
                                  default=0.0)
    eval_k: int = _help("items ranked per validation example", default=50)
    lr: float = _help("peak learning rate", default=1e-6)
