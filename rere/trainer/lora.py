"""The one LoRA policy of every trainer here (SFT, the GRPO loop, RPORec stage 1).

Adapters go on every linear layer of the decoder (peft's "all-linear": for Llama / Qwen2 the
attention and MLP projections q, k, v, o, gate, up, down; the output layer is left out),
so any causal LM architecture gets the same treatment without a list of its layer names.
"""
from __future__ import annotations


def with_lora(model, r: int, alpha: int, dropout: float = 0.0):
    """`model` wrapped by peft with rank-`r` adapters (weights of the base frozen)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
