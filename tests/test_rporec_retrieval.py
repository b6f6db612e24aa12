"""Full-catalog retrieval in item chunks (rere.rporec.retrieval) against one plain matmul,
small and awkward shapes, and at 1M items."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rere.rporec.retrieval import catalog_ranks, topk_items


def plain_topk(queries, items, k, exclude=None):
    scores = queries.float() @ items.float().T
    if exclude is not None:
        for b, banned in enumerate(exclude):
            scores[b, banned] = -torch.inf
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), order


def plain_ranks(queries, items, targets):
    scores = queries.float() @ items.float().T
    own = scores[torch.arange(len(targets)), targets]
    higher = scores > own[:, None]
    higher[torch.arange(len(targets)), targets] = False
    return higher.sum(dim=1)


@settings(max_examples=40, deadline=None)
@given(n_items=st.integers(1, 60), n_queries=st.integers(1, 5), k=st.integers(1, 70), chunk=st.integers(1, 17),
       seed=st.integers(0, 10_000), ties=st.booleans())
def test_chunked_topk_equals_a_stable_sort_of_one_matmul(n_items, n_queries, k, chunk, seed, ties):
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n_items, 4, generator=g)
    if ties:  # integer-valued vectors: many equal scores, which must come in item order
        items = items.round()
    queries = torch.randn(n_queries, 4, generator=g).round() if ties else torch.randn(n_queries, 4, generator=g)
    scores, index = topk_items(queries, items, k, chunk_items=chunk)
    want_scores, want_index = plain_topk(queries, items, min(k, n_items))
    assert torch.equal(index, want_index)
    torch.testing.assert_close(scores, want_scores)
    ranks = catalog_ranks(queries, items, torch.randint(n_items, (n_queries,), generator=g), chunk_items=chunk)
    assert ranks.dtype == torch.int64 and (ranks >= 0).all() and (ranks < n_items).all()


def test_exclusion_and_running_out_of_items():
    items = torch.eye(5)
    queries = torch.tensor([[5.0, 4, 3, 2, 1], [1.0, 2, 3, 4, 5]])
    scores, index = topk_items(queries, items, 4, chunk_items=2, exclude=[[0, 2], [0, 1, 2, 3]])
    assert index.tolist() == [[1, 3, 4, -1], [4, -1, -1, -1]]
    assert scores[0, :3].tolist() == [4.0, 2.0, 1.0] and torch.isinf(scores[0, 3])
    with pytest.raises(ValueError, match="2 lists for 1 queries"):
        topk_items(queries[:1], items, 2, exclude=[[], []])


def test_target_ranks_count_strictly_higher_items_and_never_the_target():
    items = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0.5, 0.5]])
    queries = torch.tensor([[1.0, 0], [0, 1], [1.0, 0]])
    # query 0: target 2 ties item 0 (the same vector): rank 0; query 1: item 1 alone on top;
    # query 2: target 3 (0.5) trails items 0 and 2 (1.0).
    assert catalog_ranks(queries, items, torch.tensor([2, 1, 3]), chunk_items=3).tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="target item 7 .*outside the catalog's 4 items"):
        catalog_ranks(queries, items, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="share D"):
        catalog_ranks(queries, torch.ones(4, 3), torch.tensor([0, 1, 2]))


def test_bf16_items_are_multiplied_in_float32():
    g = torch.Generator().manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(3000, 16, generator=g), dim=1).bfloat16()
    queries = torch.randn(6, 16, generator=g)
    scores, index = topk_items(queries, items, 10, chunk_items=700)
    want_scores, want_index = plain_topk(queries, items, 10)
    assert torch.equal(index, want_index)
    targets = torch.randint(3000, (6,), generator=g)
    assert torch.equal(catalog_ranks(queries, items, targets, chunk_items=700), plain_ranks(queries, items, targets))


@pytest.mark.slow
def test_one_million_items():
    g = torch.Generator().manual_seed(1)
    items = torch.nn.functional.normalize(torch.randn(1_000_000, 32, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(8, 32, generator=g), dim=1)
    scores, index = topk_items(queries, items, 50, scale=1 / 0.07)
    want_scores, want_index = plain_topk(queries, items, 50)
    assert torch.equal(index, want_index)
    torch.testing.assert_close(scores, want_scores / 0.07)
    targets = torch.cat([want_index[:4, 7], torch.randint(1_000_000, (4,), generator=g)])
    ranks = catalog_ranks(queries, items, targets)
    assert ranks[:4].tolist() == [7, 7, 7, 7]
    assert torch.equal(ranks, plain_ranks(queries, items, targets))
