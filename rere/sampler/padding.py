"""Left padding of token-id prompts, the input layout of `beam_search` and `sample`."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(prompts: Sequence[Sequence[int] | torch.Tensor], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both `[P, longest]` int64, each prompt right-aligned.

    Needs no tokenizer pad token: some tokenizers (SmolLM2's, as transformers 5.17 converts
    it from GGUF) have none, and `tokenizer(..., padding=True)` then refuses. The pad value
    never reaches the model's output: the mask hides it."""
    if not prompts:
        raise ValueError("left_pad needs at least one prompt")
    rows = [torch.as_tensor(p, dtype=torch.int64).reshape(-1) for p in prompts]
    width = max(r.numel() for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        if r.numel():
            ids[i, width - r.numel():] = r
            mask[i, width - r.numel():] = 1
    return ids, mask
