"""The LLM's representation of a text: its final hidden states, pooled to one vector.

RPORec reads two kinds of text through the same LLM:

- a user: the prompt (history) followed by the model's reasoning; pooled at its last token
  ("last") or averaged over the reasoning tokens ("mean");
- an item: its title as the prompts quote it (`"Title"`), averaged over its tokens.

Sequences are run in length-sorted batches with right padding (little padding, and no
position shift: with right padding every sequence starts at position 0, as it does alone),
through the decoder only (`model.get_decoder()`: no `[tokens, V]` logits). The vectors are
float32 whatever the model's dtype.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

POOLINGS = ("last", "mean")
# Tokens per forward when encoding without gradient: bounds the activations of one batch.
DEFAULT_TOKEN_BUDGET = 16_384


def pool_hidden(hidden: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, H] from right-padded hidden states [B, T, H]: the state at position lengths-1
    ("last"), or the mean over positions starts..lengths-1 ("mean"; a row whose span is
    empty falls back to its last state)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, lengths - 1]
    if pooling == "last":
        return last
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    span = (positions[None] >= starts[:, None]) & (positions[None] < lengths[:, None])
    count = span.sum(dim=1, keepdim=True)
    mean = (hidden * span[..., None].to(hidden.dtype)).sum(dim=1) / count.clamp(min=1).to(hidden.dtype)
    return torch.where(count > 0, mean, last)


def encode_batch(model, sequences: Sequence[Sequence[int]], starts: Sequence[int], pooling: str,
                 pad_token_id: int = 0) -> torch.Tensor:
    """float32 [B, H] for one batch of token-id sequences (differentiable: callers decide
    about `torch.no_grad`). `starts[b]`: first position of the span "mean" averages."""
    if not sequences:
        raise ValueError("encode_batch needs at least one sequence")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("an empty sequence has no hidden state to pool")
    device = next(model.parameters()).device
    lengths = torch.tensor([len(s) for s in sequences], device=device)
    ids = torch.full((len(sequences), int(lengths.max())), pad_token_id, dtype=torch.int64)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.as_tensor(s, dtype=torch.int64)
    ids = ids.to(device)
    mask = (torch.arange(ids.shape[1], device=device)[None] < lengths[:, None]).long()
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return pool_hidden(hidden, lengths, torch.as_tensor(list(starts), device=device), pooling).float()


@torch.no_grad()
def encode_all(model, sequences: Sequence[Sequence[int]], starts: Sequence[int] | None = None, *,
               pooling: str = "mean", pad_token_id: int = 0, token_budget: int = DEFAULT_TOKEN_BUDGET,
               desc: str | None = None) -> torch.Tensor:
    """float32 [n, H] on the CPU for every sequence, in their order (batches of similar
    lengths holding at most `token_budget` padded tokens; a progress bar when `desc` is set)."""
    n = len(sequences)
    starts = [0] * n if starts is None else list(starts)
    if len(starts) != n:
        raise ValueError(f"{len(starts)} starts for {n} sequences")
    order = sorted(range(n), key=lambda i: len(sequences[i]))
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    try:
        with tqdm(total=n, desc=desc, unit="text", disable=desc is None) as bar:
            position = 0
            while position < n:
                longest = len(sequences[order[position]])
                end = position + 1
                while end < n and (end - position + 1) * max(longest, len(sequences[order[end]])) <= token_budget:
                    longest = max(longest, len(sequences[order[end]]))
                    end += 1
                batch = order[position:end]
                vectors = encode_batch(model, [sequences[i] for i in batch], [starts[i] for i in batch], pooling,
                                       pad_token_id).cpu()
                if out is None:
                    out = torch.empty(n, vectors.shape[1])
                out[torch.tensor(batch)] = vectors
                bar.update(len(batch))
                position = end
    finally:
        model.train(was_training)
    if out is None:
        raise ValueError("encode_all needs at least one sequence")
    return out


def item_texts(catalog) -> list[str]:
    """Each item as the prompts show it: a quoted title, or its semantic-ID tokens."""
    return [f'"{catalog.text(i)}"' if catalog.kind == "title" else catalog.text(i) for i in range(len(catalog))]


def encode_items(model, tokenizer, catalog, *, token_budget: int = DEFAULT_TOKEN_BUDGET,
                 progress: bool = True) -> torch.Tensor:
    """float32 [N, H]: every catalog item's text (`item_texts`), mean-pooled."""
    texts = item_texts(catalog)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    empty = [i for i, t in enumerate(ids) if not t]
    if empty:
        raise ValueError(f"item {catalog.ids[empty[0]]!r}: its text {texts[empty[0]]!r} tokenizes to nothing")
    return encode_all(model, ids, pooling="mean", pad_token_id=pad_id(tokenizer), token_budget=token_budget,
                      desc="encoding items" if progress else None)


def model_fingerprint(model) -> str:
    """A short digest of the weights that would change item encodings: every parameter's
    name and shape, and the first values of the first and last few (cheap at any model
    size). Values are rounded to bf16 first, so a model loaded in bf16 for evaluation has
    the digest of its float32 original."""
    digest = hashlib.sha256()
    named = list(model.named_parameters())
    for name, p in named:
        digest.update(f"{name}{tuple(p.shape)}".encode())
    for _, p in named[:3] + named[-3:]:
        digest.update(p.detach().flatten()[:4096].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def pad_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else EOS (SmolLM2's GGUF tokenizer has
    no pad token), else 0; padding is always masked, so its value never matters."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0
