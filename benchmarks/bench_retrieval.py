"""RPORec's full-catalog retrieval (rere.rporec.retrieval) against one plain matmul, on the CPU.

    pytest benchmarks/bench_retrieval.py --benchmark-enable --benchmark-columns=min,median,max

1M items x D = 256 unit vectors (float32, 1 GB), B = 256 queries: what stage 2 scores in a
step (32 prompts x 8 reasonings) and what evaluation ranks per batch. Each group puts the
chunked op beside the plain one (`queries @ items.T`, then `topk` or a comparison with
the target's score), so the parenthesised figures are the ratios. When benchmarking, each
case also runs once in a fresh child process (peak_memory.py): `extra_info["peak_extra_mb"]`
is its peak extra memory; the plain score matrix alone is B x N x 4 bytes = 1,024 MB.
"""
from __future__ import annotations

import sys

import pytest
import torch

from peak_memory import measure_in_child, peak_extra_mb, report
from rere.rporec.retrieval import catalog_ranks, topk_items

N, D, B, K = 1_000_000, 256, 256, 50


def make_inputs():
    g = torch.Generator().manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    return queries, items, torch.randint(N, (B,), generator=g)


def plain_topk(queries, items, targets):
    return (queries @ items.T).topk(K, dim=1)


def plain_ranks(queries, items, targets):
    scores = queries @ items.T
    return (scores > scores.gather(1, targets[:, None])).sum(dim=1)


CASES = {
    "topk chunked": lambda q, i, t: topk_items(q, i, K),
    "topk plain": plain_topk,
    "ranks chunked": lambda q, i, t: catalog_ranks(q, i, t),
    "ranks plain": plain_ranks,
}


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.mark.parametrize("case", list(CASES))
def test_retrieval(benchmark, case, request):
    if benchmark.disabled:
        pytest.skip("builds 1M x 256 items (1 GB): run with --benchmark-enable")
    queries, items, targets = request.getfixturevalue("inputs")
    benchmark.group = f"{case.split()[0]}: {B} queries x {N:,} items, D={D}"
    benchmark.pedantic(CASES[case], args=(queries, items, targets), rounds=3, warmup_rounds=1)
    benchmark.extra_info["peak_extra_mb"] = round(measure_in_child(__file__, case), 1)


def _child(case: str) -> None:
    queries, items, targets = make_inputs()
    CASES[case](queries[:2], items[:1000], targets[:2] % 1000)  # warm up thread pools
    report(peak_extra_mb(lambda: CASES[case](queries, items, targets)))


if __name__ == "__main__" and sys.argv[1:2] == ["--measure"]:
    _child(" ".join(sys.argv[2:]))
