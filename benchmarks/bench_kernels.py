"""One constrained beam-search step on the CPU: rere's torch backend against the eager
mask-and-topk pipeline and a per-row Python loop (the reference LogitsProcessor's way).

    pytest benchmarks/bench_kernels.py --benchmark-enable --benchmark-columns=min,median,max

R = 256 beam rows (16 prompts x 16 beams), V = 151,936 (Qwen2), fp32, k = 32 (2 x beams,
as HF keeps), beams spread over a synthetic 1M-item title catalog. A plain `amax` over the
same logits is measured as the one-read floor.
"""
from __future__ import annotations

import pytest
import torch

from bench_index import beam_positions, states_of
from rere.index import CatalogIndex
from rere.kernels import beam_step, beam_topk, trie_masked_log_softmax
from rere.synthetic import title_like_catalog

PROMPTS, BEAMS, VOCAB, K = 16, 16, 151_936, 32


@pytest.fixture(scope="module", params=["mixed", "depth1"])
def step_inputs(request):
    tokens, offsets = title_like_catalog(1_000_000)
    index = CatalogIndex.from_flat(tokens, offsets, vocab_size=VOCAB)
    prefixes, _ = beam_positions(tokens, offsets, n_beams=PROMPTS * BEAMS, depth=None if request.param == "mixed" else 1)
    states = states_of(index, prefixes)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(PROMPTS * BEAMS, VOCAB, generator=gen)
    beam_scores = -torch.rand(PROMPTS, BEAMS, generator=gen) * 5
    return index, states, logits, beam_scores


def eager_step(index, states, logits, beam_scores):
    """log_softmax, a full-size mask built from the allowed tokens, add, topk over B x V."""
    offsets, tokens = index.allowed(states)
    rows = torch.repeat_interleave(torch.arange(states.numel()), offsets.diff())
    logp = torch.log_softmax(logits, dim=-1)
    mask = torch.full_like(logp, float("-inf"))
    mask[rows, tokens.long()] = 0.0
    scores = logp + mask + beam_scores.reshape(-1, 1)
    return torch.topk(scores.view(PROMPTS, -1), K, dim=1)


def per_row_loop_step(index, states, logits, beam_scores):
    """What a per-beam LogitsProcessor does: one row at a time, then topk over B x V."""
    offsets, tokens = index.allowed(states)
    scores = torch.empty_like(logits)
    flat_beam_scores = beam_scores.reshape(-1)
    for r in range(logits.shape[0]):
        row = torch.full((VOCAB,), float("-inf"))
        allowed = tokens[offsets[r]:offsets[r + 1]].long()
        row[allowed] = 0.0
        scores[r] = torch.log_softmax(logits[r], dim=-1) + row + flat_beam_scores[r]
    return torch.topk(scores.view(PROMPTS, -1), K, dim=1)


def test_one_read_floor(benchmark, step_inputs):
    _, _, logits, _ = step_inputs
    benchmark(torch.amax, logits, dim=-1)


def test_rere_beam_step(benchmark, step_inputs):
    index, states, logits, beam_scores = step_inputs
    got = benchmark(beam_step, logits, states, beam_scores, index.tensors, K, backend="torch")
    want = eager_step(index, states, logits, beam_scores)
    assert torch.allclose(got.scores, want.values, atol=1e-4)
    benchmark.extra_info.update(rows=PROMPTS * BEAMS, vocab=VOCAB, allowed_tokens=int(index.allowed(states)[0][-1]))


def test_rere_masked_log_softmax_only(benchmark, step_inputs):
    index, states, logits, _ = step_inputs
    benchmark(trie_masked_log_softmax, logits, states, index.tensors, backend="torch")


def test_rere_beam_topk_only(benchmark, step_inputs):
    index, states, logits, beam_scores = step_inputs
    children = trie_masked_log_softmax(logits, states, index.tensors, backend="torch")
    benchmark(beam_topk, beam_scores, children, K, backend="torch")


def test_eager_pipeline(benchmark, step_inputs):
    benchmark.pedantic(eager_step, args=step_inputs, rounds=5, warmup_rounds=1)


def test_per_row_python_loop(benchmark, step_inputs):
    benchmark.pedantic(per_row_loop_step, args=step_inputs, rounds=3, warmup_rounds=1)
