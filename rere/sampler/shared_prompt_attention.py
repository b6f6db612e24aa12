"""Attention for decoding many beams of one prompt: the prompt's keys and values are stored
once and read once per prompt, not once per beam.

After the prefill, `BeamKVCache.expand(share_prompt=True)` keeps each prompt's keys and
values as they are (`[P, kv_heads, L, D]`) and gives every beam row its own cache only for
the generated tokens. During the decode steps the model's attention layers call
`shared_prompt_attention` (registered with transformers' `AttentionInterface`): the scores
against the prompt come from one matmul per prompt over the queries of all its beams, the
scores against each beam's own tokens from a per-row matmul, and one softmax runs over both.
With 16 beams and ~500-token prompts this reads the prompt's keys and values 16x less:
SmolLM2-135M, 2 x 16 beams, 520-token prompts, 2-core CPU: attention took 79 ms of a 217 ms
decode step with the prompt expanded to every beam.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "rere_shared_prompt"
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("rere_shared_prompt_cache", default=None)


def shared_prompt_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """`query` `[rows, q_heads, q_len, D]` of P prompts x G beams; `key`/`value` the beams'
    own (generated) tokens `[rows, kv_heads, T, D]`, the new ones last. Returns
    `([rows, q_len, q_heads, D], None)` like transformers' attention functions.

    Under autocast (a trainer's bf16 forward) it expands the prompt to the rows and calls
    `scaled_dot_product_attention` as the model's default path would: rollout log-probs must
    match that forward, and a different bf16 kernel differs by ~1e-2."""
    if torch.is_autocast_enabled(query.device.type):
        return _expanded_sdpa(module, query, key, value, scaling)
    return _attention(module, query, key, value, scaling)


def _expanded_sdpa(module, query, key, value, scaling):
    cache = _ACTIVE.get()
    layer = cache.layers[module.layer_idx]
    beams = query.shape[0] // layer.prompt_keys.shape[0]
    keys = torch.cat([layer.prompt_keys.repeat_interleave(beams, 0), key], dim=2)
    values = torch.cat([layer.prompt_values.repeat_interleave(beams, 0), value], dim=2)
    q_len, new = query.shape[2], key.shape[2]
    own = torch.arange(new, device=query.device)[None, :] <= torch.arange(q_len, device=query.device)[:, None] + new - q_len
    mask = torch.cat([cache.prompt_mask.repeat_interleave(beams, 0)[:, None, None, :].expand(-1, 1, q_len, -1),
                      own[None, None].expand(query.shape[0], 1, q_len, new)], dim=-1)
    return sdpa_attention_forward(module, query, keys, values, mask, scaling=scaling)


def _attention(module, query, key, value, scaling):
    cache = _ACTIVE.get()
    if cache is None:
        raise RuntimeError(f"{NAME} attention runs only inside rere's decode steps")
    layer = cache.layers[module.layer_idx]
    prompt_keys, prompt_values = layer.prompt_keys.to(query.dtype), layer.prompt_values.to(query.dtype)
    prompt_mask = cache.prompt_mask
    rows, q_heads, q_len, dim = query.shape
    prompts, kv_heads, prompt_len, _ = prompt_keys.shape
    beams, groups, new = rows // prompts, q_heads // kv_heads, key.shape[-2]
    scaling = dim**-0.5 if scaling is None else scaling
    per_row = groups * q_len  # query vectors a row puts to each kv head (head h uses kv head h // groups)

    # Scores against the prompt: all beams of a prompt in one matmul.
    q = query.reshape(prompts, beams, kv_heads, per_row, dim).transpose(1, 2).reshape(prompts, kv_heads, -1, dim)
    to_prompt = torch.matmul(q, prompt_keys.transpose(-1, -2)) * scaling
    to_prompt = to_prompt.masked_fill(~prompt_mask[:, None, None, :], float("-inf"))
    to_prompt = to_prompt.reshape(prompts, kv_heads, beams, per_row, prompt_len).transpose(1, 2)
    to_prompt = to_prompt.reshape(rows, kv_heads, per_row, prompt_len)
    # Scores against each row's own tokens (causal among the new ones when q_len > 1).
    q_rows = query.reshape(rows, kv_heads, per_row, dim)
    to_own = torch.matmul(q_rows, key.transpose(-1, -2)) * scaling
    if q_len > 1:
        query_pos = torch.arange(q_len, device=query.device).repeat(groups) + (new - q_len)
        future = torch.arange(new, device=query.device)[None, :] > query_pos[:, None]
        to_own = to_own.masked_fill(future, float("-inf"))

    probs = torch.softmax(torch.cat([to_prompt, to_own], dim=-1).float(), dim=-1).to(value.dtype)
    from_prompt, from_own = probs.split([prompt_len, new], dim=-1)
    from_prompt = from_prompt.reshape(prompts, beams, kv_heads, per_row, prompt_len).transpose(1, 2)
    out = torch.matmul(from_prompt.reshape(prompts, kv_heads, -1, prompt_len), prompt_values)
    out = out.reshape(prompts, kv_heads, beams, per_row, dim).transpose(1, 2).reshape(rows, kv_heads, per_row, dim)
    out = out + torch.matmul(from_own, value)
    out = out.reshape(rows, q_heads, q_len, dim).transpose(1, 2).contiguous()
    return out, None


AttentionInterface.register(NAME, shared_prompt_attention)


@contextlib.contextmanager
def active(model, cache):
    """Run the model's attention through `shared_prompt_attention` over `cache`."""
    config = model.config.get_text_config()
    previous = config._attn_implementation
    token = _ACTIVE.set(cache)
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = previous
        _ACTIVE.reset(token)
