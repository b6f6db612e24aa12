"""Scores of the tokens the catalog trie allows, without a `[R, V]` mask or output.

For each beam row r with trie state states[r], the allowed next tokens are the children of
its trie position (rere.index.tensors.allowed). Hugging Face beam search scores a token as
`log_softmax(logits)[token]` and then masks the rest, so an allowed token scores
`logit - logsumexp(row)` with the logsumexp over the *full* vocabulary; with
`renormalize=True` it is over the allowed tokens only (the constrained distribution, for
sampling). The output is in the CSR layout of the children: nothing of size `[R, V]` is
written, and the logits are read once (Triton: one streaming pass per row for the
logsumexp, then a gather of the few allowed entries).

Semantics at the edges: a row of only -inf gives -inf scores; a NaN anywhere in a row
makes that row's logsumexp, hence its scores, NaN (as `log_softmax` does); +inf logits give
NaN. An invalid trie state allows nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from rere.kernels.triton_compat import tl, triton

from rere.index.tensors import TrieTensors, allowed as trie_allowed
from rere.kernels import backend as _backend
from rere.kernels.launch import COMPILE_OPTIONS

# The torch path works on row chunks of about this many elements, in one reused fp32
# buffer that stays in cache, instead of allocating [R, V] temporaries.
TORCH_CHUNK_ELEMENTS = 1 << 20
BLOCK_V = 2048


@dataclass(frozen=True)
class AllowedScores:
    """Allowed tokens of every beam row as CSR: row r owns entries offsets[r]:offsets[r+1]."""

    offsets: torch.Tensor  # int64 [R + 1]
    rows: torch.Tensor  # int64 [T]: the row of each entry
    tokens: torch.Tensor  # int32 [T], sorted within a row
    next_states: torch.Tensor  # int64 [T]: trie state after taking the token
    scores: torch.Tensor  # float32 [T]


def trie_masked_log_softmax(
    logits: torch.Tensor,
    states: torch.Tensor,
    trie: TrieTensors,
    *,
    renormalize: bool = False,
    backend: str | None = None,
) -> AllowedScores:
    """Log-probabilities of the allowed next tokens of every row (see the module docstring)."""
    if logits.dim() != 2 or states.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [R, V] and states [R]; got {tuple(logits.shape)} and {tuple(states.shape)}")
    offsets, tokens, next_states = trie_allowed(trie, states, with_next_states=True, check=False)
    rows = torch.repeat_interleave(torch.arange(states.numel(), device=logits.device), offsets.diff(),
                                   output_size=tokens.numel())
    if _backend.resolve(backend, logits) == "triton":
        scores = _triton_scores(logits, offsets, tokens, renormalize)
    else:
        scores = _torch_scores(logits, rows, tokens, renormalize)
    return AllowedScores(offsets, rows, tokens, next_states, scores)


# ----------------------------------------------------------------------------- torch twin
def row_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """float32 logsumexp of every row (an all -inf row gives -inf, a NaN row NaN)."""
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    step = max(1, TORCH_CHUNK_ELEMENTS // max(vocab, 1))
    buffer = torch.empty((min(step, rows), vocab), dtype=torch.float32, device=logits.device)
    for start in range(0, rows, step):
        chunk = logits[start:start + step]
        work = buffer[:chunk.shape[0]]
        peak = chunk.amax(dim=-1, keepdim=True).float()
        peak = torch.where(peak == float("-inf"), 0.0, peak)
        torch.sub(chunk, peak, out=work)
        out[start:start + step] = peak[:, 0] + work.exp_().sum(dim=-1).log_()
    return out


def segment_logsumexp(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """logsumexp of `values` grouped by `rows` (-inf for an empty group)."""
    peak = torch.full((n_rows,), float("-inf"), device=values.device).scatter_reduce(0, rows, values, "amax")
    safe_peak = torch.where(torch.isinf(peak), 0.0, peak)
    total = torch.zeros(n_rows, device=values.device).index_add_(0, rows, torch.exp(values - safe_peak[rows]))
    return safe_peak + torch.log(total)


def _torch_scores(logits, rows, tokens, renormalize):
    picked = logits[rows, tokens.long()].float()
    if renormalize:
        lse = segment_logsumexp(picked, rows, logits.shape[0])
    else:
        lse = row_logsumexp(logits)
    return picked - lse[rows]


# ---------------------------------------------------------------------------- triton path
@triton.jit
def tl_row_logsumexp(row_ptr, V, BLOCK_V: tl.constexpr):
    """Online logsumexp of one row of V logits (fp32), read once in blocks."""
    cols = tl.arange(0, BLOCK_V)
    peak = tl.full((), float("-inf"), tl.float32)
    total = tl.full((), 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):
        x = tl.load(row_ptr + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
        new_peak = tl.maximum(peak, tl.max(x, axis=0))
        safe = tl.where(new_peak == float("-inf"), 0.0, new_peak)  # all -inf so far: exp(-inf) = 0
        total = total * tl.exp(peak - safe) + tl.sum(tl.exp(x - safe), axis=0)
        peak = new_peak
    safe = tl.where(peak == float("-inf"), 0.0, peak)
    return safe + tl.log(total)


@triton.jit
def _allowed_scores_kernel(logits_ptr, stride_row, V, offsets_ptr, tokens_ptr, scores_ptr,
                           RENORMALIZE: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_T: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    begin = tl.load(offsets_ptr + row)
    end = tl.load(offsets_ptr + row + 1)
    lanes = tl.arange(0, BLOCK_T)
    if RENORMALIZE:  # logsumexp over this row's allowed logits only
        peak = tl.full((), float("-inf"), tl.float32)
        total = tl.full((), 0.0, tl.float32)
        for start in range(begin, end, BLOCK_T):
            mask = start + lanes < end
            tok = tl.load(tokens_ptr + start + lanes, mask=mask, other=0)
            x = tl.load(row_ptr + tok, mask=mask, other=float("-inf")).to(tl.float32)
            new_peak = tl.maximum(peak, tl.max(x, axis=0))
            safe = tl.where(new_peak == float("-inf"), 0.0, new_peak)
            total = total * tl.exp(peak - safe) + tl.sum(tl.exp(x - safe), axis=0)
            peak = new_peak
        lse = tl.where(peak == float("-inf"), 0.0, peak) + tl.log(total)
    else:
        lse = tl_row_logsumexp(row_ptr, V, BLOCK_V)
    for start in range(begin, end, BLOCK_T):
        mask = start + lanes < end
        tok = tl.load(tokens_ptr + start + lanes, mask=mask, other=0)
        x = tl.load(row_ptr + tok, mask=mask, other=0.0).to(tl.float32)
        tl.store(scores_ptr + start + lanes, x - lse, mask=mask)


def _triton_scores(logits, offsets, tokens, renormalize):
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    scores = torch.empty(tokens.numel(), dtype=torch.float32, device=logits.device)
    if logits.shape[0]:
        _allowed_scores_kernel[(logits.shape[0],)](
            logits, logits.stride(0), logits.shape[1], offsets, tokens, scores,
            RENORMALIZE=renormalize, BLOCK_V=BLOCK_V, BLOCK_T=256, **COMPILE_OPTIONS)
    return scores
