"""Catalog index throughput: build, size, load, and batched allowed/advance for 1,024 beams.

    pytest benchmarks/bench_index.py --benchmark-enable --benchmark-columns=min,median,max

Catalogs are synthetic and title-like (`rere.synthetic`: 6-20 Zipf-drawn tokens + EOS over
a 151,936-token vocabulary) at 10k, 100k and 1M items; the reference dict-of-prefixes
index is measured at 100k. Sizes and ratios go to `extra_info` (use --benchmark-json).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_prefix_dict import allowed as dict_allowed
from reference_prefix_dict import build_prefix_dict, measure
from rere.index import CatalogIndex
from rere.synthetic import title_like_catalog

SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}
BEAMS = 1024
VOCAB = 151_936


@pytest.fixture(scope="module", params=list(SIZES))
def catalog(request):
    n = SIZES[request.param]
    tokens, offsets = title_like_catalog(n)
    return n, tokens, offsets, CatalogIndex.from_flat(tokens, offsets, vocab_size=VOCAB)


def beam_positions(tokens, offsets, n_beams=BEAMS, seed=0, depth=None):
    """Beams part-way through random items, as in a decode step: each beam's prefix (at a
    random depth inside its item unless `depth` is given) and the item's next token."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, len(offsets) - 1, n_beams)
    lengths = offsets[items + 1] - offsets[items]
    depths = rng.integers(1, lengths) if depth is None else np.full(n_beams, depth)
    prefixes = [tokens[offsets[i]:offsets[i] + d].tolist() for i, d in zip(items, depths)]
    return prefixes, torch.from_numpy(tokens[offsets[items] + depths])


def states_of(index, prefixes):
    states = index.root_states(len(prefixes))
    for d in range(max(map(len, prefixes))):
        step = torch.tensor([p[d] if d < len(p) else 0 for p in prefixes])
        active = torch.tensor([d < len(p) for p in prefixes])
        states = torch.where(active, index.advance(states, step), states)
    return states


def test_build(benchmark, catalog):
    n, tokens, offsets, _ = catalog
    rounds = {10_000: 20, 100_000: 5, 1_000_000: 3}[n]
    index = benchmark.pedantic(CatalogIndex.from_flat, args=(tokens, offsets), kwargs={"vocab_size": VOCAB},
                               rounds=rounds, warmup_rounds=1)
    stats = index.stats()
    benchmark.extra_info.update(items=n, nodes=stats["nodes"], bytes=stats["bytes"],
                                bytes_per_item=stats["bytes_per_item"], max_fanout=stats["max_fanout_per_depth"][:4])


def test_build_from_sequences(benchmark, catalog):
    """The same build from one Python list per item (what a user's own tokenizer loop gives):
    within 1.5x of `from_flat` at 1M items (the lists' conversion is one pass over the tokens)."""
    n, tokens, offsets, _ = catalog
    lists = np.split(tokens, offsets[1:-1])
    lists = [item.tolist() for item in lists]
    rounds = {10_000: 20, 100_000: 5, 1_000_000: 3}[n]
    index = benchmark.pedantic(CatalogIndex.from_sequences, args=(lists,), kwargs={"vocab_size": VOCAB},
                               rounds=rounds, warmup_rounds=1)
    assert index.num_items == n
    benchmark.extra_info.update(items=n)


def test_load(benchmark, catalog, tmp_path):
    n, _, _, index = catalog
    path = tmp_path / "catalog.rtrie"
    index.save(path)
    loaded = benchmark.pedantic(CatalogIndex.load, args=(path,), rounds=10, warmup_rounds=1)
    assert loaded.num_items == n
    benchmark.extra_info.update(items=n, file_bytes=path.stat().st_size)


@pytest.mark.parametrize("where", ["mixed", "depth1"])
def test_allowed(benchmark, catalog, where):
    """`mixed`: beams at random depths (a typical step); `depth1`: every beam one token in,
    where title catalogs fan out most (the worst step)."""
    n, tokens, offsets, index = catalog
    prefixes, _ = beam_positions(tokens, offsets, depth=None if where == "mixed" else 1)
    states = states_of(index, prefixes)
    offsets_out, _, _ = benchmark(index.allowed, states, True)
    benchmark.extra_info.update(items=n, beams=BEAMS, allowed_tokens=int(offsets_out[-1]))


def test_advance(benchmark, catalog):
    n, tokens, offsets, index = catalog
    prefixes, nxt = beam_positions(tokens, offsets)
    states = states_of(index, prefixes)
    out = benchmark(index.advance, states, nxt)
    assert (out != CatalogIndex.INVALID).all()
    benchmark.extra_info.update(items=n, beams=BEAMS)


# ------------------------------------------------------------ the reference approach, 100k
@pytest.fixture(scope="module")
def catalog_100k():
    return title_like_catalog(100_000)


def test_reference_dict_build(benchmark, catalog_100k):
    tokens, offsets = catalog_100k
    table = benchmark.pedantic(build_prefix_dict, args=(tokens, offsets), rounds=2)
    held = measure(100_000)["bytes"]  # a separate traced build: tracing slows it down
    ours = CatalogIndex.from_flat(tokens, offsets, vocab_size=VOCAB).stats()["bytes"]
    benchmark.extra_info.update(items=100_000, keys=len(table), bytes=held, bytes_per_item=held / 100_000,
                                size_ratio_vs_rere=held / ours)


def test_reference_dict_allowed(benchmark, catalog_100k):
    tokens, offsets = catalog_100k
    table = build_prefix_dict(tokens, offsets)
    prefixes, _ = beam_positions(tokens, offsets)
    out = benchmark(dict_allowed, table, prefixes)
    benchmark.extra_info.update(items=100_000, beams=BEAMS, allowed_tokens=sum(map(len, out)))
