"""The one LoRA policy of every trainer here (SFT, the GRPO loop, RPORec stage 1).

Adapters go on every linear layer of the decoder (peft's "all-linear": for Llama / Qwen2 the
attention and MLP projections q, k, v, o, gate, up, down; the output layer is left out),
so any causal LM architecture gets the same treatment without a list of its layer names.
"""
from __future__ import annotations


def with_lora(model, settings):
    """`model` wrapped by peft with the adapters `settings` (a `RunSettings`: lora_r,
    lora_alpha, lora_dropout) ask for; the weights of the base are frozen."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                            lora_dropout=settings.lora_dropout, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
