"""One constrained beam-search step on the GPU: logits in, the top-k continuations out.

`beam_step` = `trie_masked_log_softmax` + `beam_topk`, in two launches and without
anything of size `[R, V]`:

1. `_beam_row_kernel`, one program per beam row: streams the row's logits once for its
   logsumexp, walks that row's trie children (in blocks, so any fan-out works) and keeps
   the row's best K_PAD candidates (a prompt's top-k takes at most k from one beam) in a
   small scratch buffer, R x K_PAD packed keys.
2. `_beam_merge_kernel`, one program per prompt: streams its B x K_PAD candidates through a
   running top-K_PAD and writes the k winners.

It was one launch, the last program of each prompt merging (an atomic ticket per prompt).
At 50 beams (evaluation: K_PAD = 128, 6,400 candidates a prompt) that merge held the whole
pool in registers: ptxas gave every program 255 registers and 208-380 bytes of spill on
sm_90, paid during the long logsumexp pass too. Split, the row pass needs no pool and the
merge streams it (`rere.kernels.aot` reports the registers of each; CI fails on a spill).

Same results as the two ops in sequence (the torch backend runs exactly that), including
tie-breaking (lower parent, then lower token) and the NaN/-inf semantics documented there.
"""
from __future__ import annotations

import torch
from rere.kernels.triton_compat import tl, triton

from rere.index.tensors import TrieTensors
from rere.kernels import backend as _backend
from rere.kernels.beam_topk import K_PADS, TOPK_BLOCK, TOPK_WARPS, BeamCandidates, beam_topk, k_pad_for, tl_merge_block
from rere.kernels.launch import COMPILE_OPTIONS
from rere.kernels.ranking_keys import KEY_LIMIT, TL_EMPTY, tl_pack, tl_unpack_key, tl_unpack_score
from rere.kernels.trie_masked_log_softmax import BLOCK_V, tl_row_logsumexp, trie_masked_log_softmax


def beam_step(
    logits: torch.Tensor,
    states: torch.Tensor,
    beam_scores: torch.Tensor,
    trie: TrieTensors,
    k: int,
    *,
    backend: str | None = None,
) -> BeamCandidates:
    """Top-k continuations per prompt of `beam_scores[p, b] + log_softmax(logits[p*B+b])[token]`
    over the tokens the trie allows at `states[p*B+b]`.

    logits `[P*B, V]` (any float dtype), states `[P*B]` int64, beam_scores `[P, B]`.
    """
    n_prompts, beams = beam_scores.shape
    if logits.dim() != 2 or logits.shape[0] != n_prompts * beams or states.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [P*B, V] and states [P*B] for beam_scores [P, B] = {tuple(beam_scores.shape)}; "
                         f"got {tuple(logits.shape)} and {tuple(states.shape)}")
    key_stride = max(trie.max_children, 1)
    fits = k <= K_PADS[-1] and beams * key_stride < KEY_LIMIT
    if _backend.resolve(backend, logits) == "triton" and fits:
        return _triton_beam_step(logits, states, beam_scores, trie, k, key_stride)
    children = trie_masked_log_softmax(logits, states, trie, backend=backend)
    return beam_topk(beam_scores, children, k, backend=backend)


@triton.jit
def _beam_row_kernel(
    logits_ptr, stride_row, V, states_ptr, beam_scores_ptr,
    child_offsets_ptr, node_tokens_ptr, tail_offsets_ptr, tail_tokens_ptr,
    lse_ptr, scratch_ptr, beams, key_stride,
    K_PAD: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0)
    parent = row % beams
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row

    # 1. The row's logsumexp over the full vocabulary: the one pass over the logits.
    lse = tl_row_logsumexp(row_ptr, V, BLOCK_V)
    tl.store(lse_ptr + row, lse)

    # 2. The row's candidates: its trie children (or the one forced token inside an edge).
    state = tl.load(states_ptr + row)
    beam_score = tl.load(beam_scores_ptr + row)
    valid = state != -1
    node = tl.where(valid, state >> 32, 0)
    consumed = state & 0xFFFFFFFF
    tail_lo = tl.load(tail_offsets_ptr + node)
    edge_len = tl.where(node == 0, 0, 1 + tl.load(tail_offsets_ptr + node + 1) - tail_lo)
    inside = valid & (consumed < edge_len)
    first = tl.load(child_offsets_ptr + node)
    n_children = tl.where(valid & (consumed >= edge_len), tl.load(child_offsets_ptr + node + 1) - first, 0)
    count = tl.where(inside, 1, n_children)
    forced = tl.load(tail_tokens_ptr + tail_lo + consumed - 1, mask=inside, other=0)

    lanes = tl.arange(0, BLOCK_C)
    best = tl.full((K_PAD,), TL_EMPTY, tl.int64)
    for start in range(0, count, BLOCK_C):
        rank = start + lanes
        mask = rank < count
        child_tok = tl.load(node_tokens_ptr + first + rank, mask=rank < n_children, other=0)
        tok = tl.where(inside, forced, child_tok)
        x = tl.load(row_ptr + tok, mask=mask, other=0.0).to(tl.float32)
        score = (x - lse) + beam_score  # HF's order: log_softmax, then add the beam score
        best = tl_merge_block(best, tl.where(mask, tl_pack(score, parent * key_stride + rank), TL_EMPTY), K_PAD)
    tl.store(scratch_ptr + row * K_PAD + tl.arange(0, K_PAD), best)


@triton.jit
def _beam_merge_kernel(
    logits_ptr, stride_row, states_ptr,
    child_offsets_ptr, node_tokens_ptr, tail_offsets_ptr, tail_tokens_ptr,
    lse_ptr, scratch_ptr,
    parents_ptr, tokens_ptr, next_states_ptr, scores_ptr, token_scores_ptr,
    beams, k, key_stride,
    K_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    prompt = tl.program_id(0)
    pool = beams * K_PAD
    pool_ptr = scratch_ptr + prompt.to(tl.int64) * pool
    lanes = tl.arange(0, BLOCK)
    top = tl.full((K_PAD,), TL_EMPTY, tl.int64)
    for start in range(0, pool, BLOCK):
        cands = start + lanes
        top = tl_merge_block(top, tl.load(pool_ptr + cands, mask=cands < pool, other=TL_EMPTY), K_PAD)

    # Decode the winners: the key is parent * key_stride + rank among the parent's children.
    ok = top != TL_EMPTY
    key = tl_unpack_key(top)
    win_parent = key // key_stride
    win_rank = key % key_stride
    win_row = prompt * beams + win_parent
    win_state = tl.load(states_ptr + win_row, mask=ok, other=0)
    win_node = win_state >> 32
    win_consumed = win_state & 0xFFFFFFFF
    win_tail_lo = tl.load(tail_offsets_ptr + win_node, mask=ok, other=0)
    win_len = tl.where(win_node == 0, 0, 1 + tl.load(tail_offsets_ptr + win_node + 1, mask=ok, other=0) - win_tail_lo)
    win_inside = ok & (win_consumed < win_len)
    child = tl.load(child_offsets_ptr + win_node, mask=ok, other=0) + win_rank
    win_tok = tl.where(win_inside,
                       tl.load(tail_tokens_ptr + win_tail_lo + win_consumed - 1, mask=win_inside, other=0),
                       tl.load(node_tokens_ptr + child, mask=ok & (win_consumed >= win_len), other=0)).to(tl.int64)
    win_next = tl.where(win_inside, win_state + 1, (child.to(tl.int64) << 32) | 1)
    x = tl.load(logits_ptr + win_row.to(tl.int64) * stride_row + win_tok, mask=ok, other=0.0).to(tl.float32)
    token_score = x - tl.load(lse_ptr + win_row, mask=ok, other=0.0)
    slots = tl.arange(0, K_PAD)
    out = prompt * k + slots
    keep = slots < k
    tl.store(parents_ptr + out, tl.where(ok, win_parent, -1), mask=keep)
    tl.store(tokens_ptr + out, tl.where(ok, win_tok, -1), mask=keep)
    tl.store(next_states_ptr + out, tl.where(ok, win_next, -1), mask=keep)
    tl.store(scores_ptr + out, tl.where(ok, tl_unpack_score(top), float("-inf")), mask=keep)
    tl.store(token_scores_ptr + out, tl.where(ok, token_score, float("-inf")), mask=keep)


def _triton_beam_step(logits, states, beam_scores, trie, k, key_stride) -> BeamCandidates:
    n_prompts, beams = beam_scores.shape
    device = logits.device
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    k_pad = k_pad_for(k)
    rows = n_prompts * beams
    lse = torch.empty(rows, dtype=torch.float32, device=device)
    scratch = torch.empty(rows * k_pad, dtype=torch.int64, device=device)
    parents = torch.empty((n_prompts, k), dtype=torch.int64, device=device)
    tokens = torch.empty_like(parents)
    next_states = torch.empty_like(parents)
    scores = torch.empty((n_prompts, k), dtype=torch.float32, device=device)
    token_scores = torch.empty_like(scores)
    if rows:
        states = states.to(torch.int64).contiguous()
        trie_arrays = (trie.child_offsets, trie.node_tokens, trie.tail_offsets, trie.tail_tokens)
        _beam_row_kernel[(rows,)](
            logits, logits.stride(0), logits.shape[1], states, beam_scores.float().contiguous(), *trie_arrays,
            lse, scratch, beams, key_stride,
            K_PAD=k_pad, BLOCK_V=BLOCK_V, BLOCK_C=max(k_pad, 128), **COMPILE_OPTIONS)
        _beam_merge_kernel[(n_prompts,)](
            logits, logits.stride(0), states, *trie_arrays, lse, scratch,
            parents, tokens, next_states, scores, token_scores, beams, k, key_stride,
            K_PAD=k_pad, BLOCK=max(k_pad, TOPK_BLOCK), num_warps=TOPK_WARPS, **COMPILE_OPTIONS)
    return BeamCandidates(parents, tokens, next_states, scores, token_scores)
