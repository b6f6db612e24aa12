"""Calls of every op in `rere.kernels` that reach every launch configuration its dispatcher
can choose: each block or register width from the launchers' tables, each logits dtype,
the first decode step (one beam a prompt) and the later ones.

`rere.kernels.aot` runs these on small CPU tensors under Triton's interpreter, records each
kernel launch they make, and compiles what was recorded for GPU targets. The launches are
the launchers' own, so a changed signature or a new block choice is compiled as it will be
launched; a kernel that none of these calls reaches fails the check (a new op must add its
calls here).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from rere.index import CatalogIndex
from rere.kernels.beam_step import beam_step
from rere.kernels.beam_topk import K_PADS, beam_topk
from rere.kernels.fused_linear_selective_log_softmax import fused_linear_selective_log_softmax
from rere.kernels.launch import STREAM_BLOCKS
from rere.kernels.selective_log_softmax import selective_log_softmax
from rere.kernels.trie_masked_log_softmax import trie_masked_log_softmax

LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# A vocabulary like the real ones (151,936, 49,152 and 32,000 are all multiples of 16, which
# Triton specialises on) and longer than one logsumexp block, kept small for the interpreter.
VOCAB = 2_112


def _catalog(vocab: int) -> CatalogIndex:
    """A few items: the interpreter's top-k is slow (~0.3 s a block at K_PAD = 128), so every
    row's children fit in one block. What the compiler sees does not depend on the data."""
    eos = vocab - 1
    return CatalogIndex.from_sequences([[1, eos], [2, eos], [3, 7, eos], [3, 8, 9, eos]], vocab_size=vocab)


def _beam_inputs(index: CatalogIndex, beams: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(beams, index.vocab_size, generator=gen).to(dtype)
    states = index.root_states(beams)
    beam_scores = -torch.rand(1, beams, generator=gen)
    return logits, states, beam_scores


def _logprob_call(op: Callable, dtype: torch.dtype, vocab: int) -> Callable[[], None]:
    """Forward and backward of a selective log-softmax op over `vocab` columns."""
    def call():
        gen = torch.Generator().manual_seed(vocab)
        ids = torch.randint(0, vocab, (2,), generator=gen)
        if op is selective_log_softmax:
            logits = torch.randn(2, vocab, generator=gen).to(dtype).requires_grad_()
            out = op(logits, ids, backend="triton")
        else:
            hidden = torch.randn(2, 8, generator=gen).to(dtype).requires_grad_()
            weight = torch.randn(vocab, 8, generator=gen).to(dtype).requires_grad_()
            out = op(hidden, weight, ids, backend="triton", chunk_size=vocab)
        out.sum().backward()
    return call


def launch_cases() -> list[tuple[str, Callable[[], object]]]:
    """(label, call) pairs; each call runs one op with backend='triton' on CPU tensors."""
    index = _catalog(VOCAB)
    trie = index.tensors
    cases: list[tuple[str, Callable[[], object]]] = []
    for k_pad in K_PADS:
        # The first step has one beam a prompt (Triton specialises an integer 1); later ones more.
        for beams in (1, 2):
            logits, states, beam_scores = _beam_inputs(index, beams, torch.float32, seed=k_pad + beams)
            children = trie_masked_log_softmax(logits, states, trie, backend="torch")
            cases.append((f"beam_topk k={k_pad} beams={beams}",
                          lambda s=beam_scores, c=children, k=k_pad: beam_topk(s, c, k, backend="triton")))
            for dtype in LOGITS_DTYPES:
                logits, states, beam_scores = _beam_inputs(index, beams, dtype, seed=k_pad + beams)
                cases.append((f"beam_step k={k_pad} beams={beams} {dtype}",
                              lambda x=logits, st=states, s=beam_scores, k=k_pad: beam_step(x, st, s, trie, k,
                                                                                           backend="triton")))
    for dtype in LOGITS_DTYPES:
        logits, states, _ = _beam_inputs(index, 4, dtype, seed=1)
        for renormalize in (False, True):
            cases.append((f"trie_masked_log_softmax renormalize={renormalize} {dtype}",
                          lambda x=logits, st=states, r=renormalize: trie_masked_log_softmax(
                              x, st, trie, renormalize=r, backend="triton")))
        for block in STREAM_BLOCKS:
            cases.append((f"selective_log_softmax V={block} {dtype}", _logprob_call(selective_log_softmax, dtype, block)))
            cases.append((f"fused_linear_selective_log_softmax chunk={block} {dtype}",
                          _logprob_call(fused_linear_selective_log_softmax, dtype, block)))
    return cases
