"""Per prompt, the best `k` continuations over all children of all its beams.

A prompt owns B consecutive beam rows. A candidate is (parent beam, allowed token) with
score `beam_scores[parent] + child_score`. Fan-out varies from 1 (inside a title) to ~50k
(the root of a 1M-item catalog), so candidates stay in the CSR layout of
`trie_masked_log_softmax` and are never padded to the largest fan-out. Ties break toward
the lower parent, then the lower token: the order of a stable descending sort of the
equivalent dense `[P, B * V]` tensor. (`torch.topk`, which HF beam search uses, promises no
order among exact ties; on the CPU it returns them out of index order, so parity with HF
holds up to exact ties.) NaN scores rank below -inf. Slots beyond a prompt's number of
candidates are empty: parent, token and next state -1, score -inf.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from rere.kernels.triton_compat import tl, triton

from rere.kernels import backend as _backend
from rere.kernels.launch import COMPILE_OPTIONS
from rere.kernels.ranking_keys import EMPTY, KEY_LIMIT, TL_EMPTY, pack, tl_pack, unpack
from rere.kernels.trie_masked_log_softmax import AllowedScores

# The running top-k of a Triton program lives in registers, padded to one of these widths
# (larger k takes the torch twin). Few widths, so that CI can compile each ahead of time.
K_PADS = (16, 32, 64, 128)
TOPK_BLOCK = 256  # candidates a beam_topk program streams at once
# Warps of a program that top-k's blocks of TOPK_BLOCK packed keys (here and in beam_step's
# merge): one packed key a thread. Such a program serves a whole prompt, so the decode step
# waits on its latency.
TOPK_WARPS = 8


def k_pad_for(k: int) -> int:
    """The register width of a running top-k of `k` (k <= K_PADS[-1])."""
    return next(width for width in K_PADS if width >= k)


@dataclass(frozen=True)
class BeamCandidates:
    """The chosen continuations, best first, `[P, k]` each."""

    parents: torch.Tensor  # int64: beam index within the prompt (0..B-1), -1 if empty
    tokens: torch.Tensor  # int64, -1 if empty
    next_states: torch.Tensor  # int64 trie state after the token, -1 if empty
    scores: torch.Tensor  # float32 total score, -inf if empty
    token_scores: torch.Tensor  # float32 score of the token alone (its log-prob), -inf if empty


def beam_topk(beam_scores: torch.Tensor, children: AllowedScores, k: int, *, backend: str | None = None) -> BeamCandidates:
    """Top-k of `beam_scores[p, b] + children.scores` per prompt p (see the module docstring).

    `beam_scores` is `[P, B]`; `children` holds the candidates of the P * B beam rows.
    """
    if beam_scores.dim() != 2 or children.offsets.numel() != beam_scores.numel() + 1:
        raise ValueError(f"beam_scores must be [P, B] with one CSR row per beam; got {tuple(beam_scores.shape)} "
                         f"and {children.offsets.numel() - 1} rows")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if _backend.resolve(backend, beam_scores) == "triton" and k <= K_PADS[-1]:
        return _triton_beam_topk(beam_scores, children, k)
    return _torch_beam_topk(beam_scores, children, k)


def decode(children: AllowedScores, beams: int, prompt_start: torch.Tensor, packed: torch.Tensor) -> BeamCandidates:
    """Turn packed `[P, k]` winners (key = entry index within the prompt) into candidates."""
    scores, keys, valid = unpack(packed)
    entry = torch.where(valid, prompt_start[:, None] + keys, 0)
    if children.rows.numel() == 0:  # no candidates at all: every slot is empty
        fill = torch.full_like(packed, -1)
        return BeamCandidates(fill, fill.clone(), fill.clone(), scores, scores.clone())
    parents = torch.where(valid, children.rows[entry] % beams, -1)
    tokens = torch.where(valid, children.tokens[entry].long(), -1)
    next_states = torch.where(valid, children.next_states[entry], -1)
    token_scores = torch.where(valid, children.scores[entry], float("-inf"))
    return BeamCandidates(parents, tokens, next_states, scores, token_scores)


# ----------------------------------------------------------------------------- torch twin
def _torch_beam_topk(beam_scores, children, k):
    n_prompts, beams = beam_scores.shape
    device = beam_scores.device
    prompt_start = children.offsets[::beams][:n_prompts]  # first entry of each prompt
    prompt = children.rows // beams
    totals = beam_scores.reshape(-1).float()[children.rows] + children.scores
    key = torch.arange(totals.numel(), device=device) - prompt_start[prompt]
    if totals.numel() and int(key.max()) >= KEY_LIMIT:
        raise ValueError("a prompt has more than 2^32 - 1 candidates")
    packed = pack(totals, key)
    counts = children.offsets[beams::beams] - prompt_start
    width = max(int(counts.max()) if n_prompts else 0, k)
    if n_prompts * width <= 2 * packed.numel() + n_prompts * k:
        # Prompts of similar size (the usual case): one [P, width] grid indexed by the key, and
        # torch.topk on the packed keys, which are unique within a prompt (no ties to order).
        grid = torch.full((n_prompts, width), EMPTY, dtype=torch.int64, device=device)
        grid[prompt, key] = packed
        return decode(children, beams, prompt_start, torch.topk(grid, k, dim=1).values)
    # One prompt dwarfs the others: a segmented top-k by two sorts instead, with no padding.
    order = torch.argsort(packed, descending=True, stable=True)
    order = order[torch.argsort(prompt[order], stable=True)]
    sorted_prompt = prompt[order]
    rank = torch.arange(order.numel(), device=device) - prompt_start[sorted_prompt]
    keep = rank < k
    out = torch.full((n_prompts, k), EMPTY, dtype=torch.int64, device=device)
    out[sorted_prompt[keep], rank[keep]] = packed[order[keep]]
    return decode(children, beams, prompt_start, out)


# ---------------------------------------------------------------------------- triton path
@triton.jit
def tl_merge_block(best, block, K_PAD: tl.constexpr):
    """The K_PAD largest packed keys of `best` (K_PAD of them) and `block` (a power-of-two
    width >= K_PAD); `best` unchanged, at the cost of one max, when nothing in `block` makes
    the cut (the common case once the running top-k has filled)."""
    if tl.max(block, axis=0) > tl.min(best, axis=0):
        both = tl.reshape(tl.join(best, tl.topk(block, K_PAD)), (2 * K_PAD,))
        best = tl.topk(both, K_PAD)
    return best


@triton.jit
def _beam_topk_kernel(offsets_ptr, rows_ptr, scores_ptr, beam_scores_ptr, out_ptr, beams, k,
                      K_PAD: tl.constexpr, BLOCK: tl.constexpr):
    prompt = tl.program_id(0)
    begin = tl.load(offsets_ptr + prompt * beams)
    end = tl.load(offsets_ptr + (prompt + 1) * beams)
    lanes = tl.arange(0, BLOCK)
    best = tl.full((K_PAD,), TL_EMPTY, tl.int64)
    for start in range(begin, end, BLOCK):
        idx = start + lanes
        mask = idx < end
        row = tl.load(rows_ptr + idx, mask=mask, other=0)
        total = tl.load(beam_scores_ptr + row, mask=mask, other=0.0) + tl.load(scores_ptr + idx, mask=mask, other=0.0)
        best = tl_merge_block(best, tl.where(mask, tl_pack(total, idx - begin), TL_EMPTY), K_PAD)
    slots = tl.arange(0, K_PAD)
    tl.store(out_ptr + prompt * k + slots, best, mask=slots < k)


def _triton_beam_topk(beam_scores, children, k):
    n_prompts, beams = beam_scores.shape
    k_pad = k_pad_for(k)
    out = torch.empty((n_prompts, k), dtype=torch.int64, device=beam_scores.device)
    if n_prompts:
        _beam_topk_kernel[(n_prompts,)](
            children.offsets, children.rows, children.scores, beam_scores.float().contiguous(), out, beams, k,
            K_PAD=k_pad, BLOCK=max(k_pad, TOPK_BLOCK), num_warps=TOPK_WARPS, **COMPILE_OPTIONS)
    prompt_start = children.offsets[::beams][:n_prompts]
    return decode(children, beams, prompt_start, out)
