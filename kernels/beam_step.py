"""One constrained beam-search step in one launch: logits in, the top-k continuations out.

`beam_step` = `trie_masked_log_softmax` + `beam_topk`, fused: each program streams one beam
row's logits once for its logsumexp, walks that row's trie children (in blocks, so any
fan-out works), keeps the row's best K_PAD candidates in registers (a prompt's top-k
takes at most k from one beam), and writes them to a small scratch buffer. The last
program of a prompt to finish (an atomic ticket per prompt) merges the B x K_PAD
candidates of its prompt and writes the k winners. Nothing of size `[R, V]` and no
per-candidate array is written: R x K_PAD scratch entries and the `[P, k]` result.

Same results as the two ops in sequence (the torch backend runs exactly that), including
tie-breaking (lower parent, then lower token) and the NaN/-inf semantics documented there.
"""
from __future__ import annotations

import torch
from rere.kernels.triton_compat import tl, triton

from rere.index.tensors import TrieTensors
from rere.kernels import backend as _backend
from rere.kernels.beam_topk import MAX_TRITON_K, BeamCandidates, beam_topk, tl_merge_topk
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
    fits = k <= MAX_TRITON_K and beams * key_stride < KEY_LIMIT
    if _backend.resolve(backend, logits) == "triton" and fits:
        return _fused(logits, states, beam_scores, trie, k, key_stride)
    children = trie_masked_log_softmax(logits, states, trie, backend=backend)
    return beam_topk(beam_scores, children, k, backend=backend)


@triton.jit
def _beam_step_kernel(
    logits_ptr, stride_row, V, states_ptr, beam_scores_ptr,
    child_offsets_ptr, node_tokens_ptr, tail_offsets_ptr, tail_tokens_ptr,
    lse_ptr, scratch_ptr, ticket_ptr,
    parents_ptr, tokens_ptr, next_states_ptr, scores_ptr, token_scores_ptr,
    beams, k, key_stride,
    K_PAD: tl.constexpr, CAND_PAD: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0)
    prompt = row // beams
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
        packed = tl.where(mask, tl_pack(score, parent * key_stride + rank), TL_EMPTY)
        if tl.max(packed, axis=0) > tl.min(best, axis=0):
            best = tl_merge_topk(best, tl.topk(packed, K_PAD), K_PAD)
    slots = tl.arange(0, K_PAD)
    tl.store(scratch_ptr + row * K_PAD + slots, best)

    # 3. The prompt's last program to get here merges its beams' candidates. The barrier
    # and the acq_rel ticket publish this program's stores; .cg loads read them from L2.
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr + prompt, 1, sem="acq_rel")
    if ticket == beams - 1:
        tl.debug_barrier()
        cands = tl.arange(0, CAND_PAD)
        pool = tl.load(scratch_ptr + prompt * beams * K_PAD + cands, mask=cands < beams * K_PAD, other=TL_EMPTY,
                       cache_modifier=".cg")
        top = tl.topk(pool, K_PAD)
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
        token_score = x - tl.load(lse_ptr + win_row, mask=ok, other=0.0, cache_modifier=".cg")
        out = prompt * k + slots
        keep = slots < k
        tl.store(parents_ptr + out, tl.where(ok, win_parent, -1), mask=keep)
        tl.store(tokens_ptr + out, tl.where(ok, win_tok, -1), mask=keep)
        tl.store(next_states_ptr + out, tl.where(ok, win_next, -1), mask=keep)
        tl.store(scores_ptr + out, tl.where(ok, tl_unpack_score(top), float("-inf")), mask=keep)
        tl.store(token_scores_ptr + out, tl.where(ok, token_score, float("-inf")), mask=keep)


def _fused(logits, states, beam_scores, trie, k, key_stride) -> BeamCandidates:
    n_prompts, beams = beam_scores.shape
    device = logits.device
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    k_pad = max(2, triton.next_power_of_2(k))
    rows = n_prompts * beams
    lse = torch.empty(rows, dtype=torch.float32, device=device)
    scratch = torch.empty(rows * k_pad, dtype=torch.int64, device=device)
    tickets = torch.zeros(n_prompts, dtype=torch.int32, device=device)
    parents = torch.empty((n_prompts, k), dtype=torch.int64, device=device)
    tokens = torch.empty_like(parents)
    next_states = torch.empty_like(parents)
    scores = torch.empty((n_prompts, k), dtype=torch.float32, device=device)
    token_scores = torch.empty_like(scores)
    if rows:
        _beam_step_kernel[(rows,)](
            logits, logits.stride(0), logits.shape[1], states.to(torch.int64).contiguous(),
            beam_scores.float().contiguous(),
            trie.child_offsets, trie.node_tokens, trie.tail_offsets, trie.tail_tokens,
            lse, scratch, tickets, parents, tokens, next_states, scores, token_scores,
            beams, k, key_stride,
            K_PAD=k_pad, CAND_PAD=triton.next_power_of_2(beams * k_pad), BLOCK_V=BLOCK_V, BLOCK_C=max(k_pad, 128))
    return BeamCandidates(parents, tokens, next_states, scores, token_scores)
