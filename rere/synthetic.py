"""Deterministic synthetic catalogs for benchmarks and scale tests.

Title-like items: 6-20 tokens drawn from a Zipf law over a Qwen2-sized vocabulary (a few
tokens are very common, most are rare, as in product titles), then EOS. With the default
exponent a 1M-item catalog has a root fan-out of ~50k, as measured on real title catalogs
(49,933 at the root of a 1M-title catalog tokenized with Qwen2's vocabulary; the project's
design notes, not shipped).
"""
from __future__ import annotations

import numpy as np

QWEN2_VOCAB = 151_936
QWEN2_EOS = 151_643


def title_like_catalog(
    n_items: int,
    *,
    vocab_size: int = QWEN2_VOCAB,
    eos_token_id: int = QWEN2_EOS,
    min_len: int = 6,
    max_len: int = 20,
    zipf_exponent: float = 1.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`(tokens, offsets)`: item i is tokens[offsets[i]:offsets[i+1]], EOS included.

    Token ids are drawn by Zipf rank and mapped through a fixed random permutation, so the
    common tokens are spread over the vocabulary rather than being the smallest ids.
    """
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    rng = np.random.default_rng(seed)
    draws_vocab = vocab_size - 1 if eos_token_id < vocab_size else vocab_size
    weights = 1.0 / np.arange(1, draws_vocab + 1, dtype=np.float64) ** zipf_exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    rank_to_token = rng.permutation(np.delete(np.arange(vocab_size), eos_token_id)
                                    if eos_token_id < vocab_size else np.arange(vocab_size))
    lengths = rng.integers(min_len, max_len + 1, size=n_items)  # without EOS
    ranks = np.searchsorted(cdf, rng.random(int(lengths.sum())), side="right")
    body = rank_to_token[np.minimum(ranks, draws_vocab - 1)]

    offsets = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=np.int64)
    is_eos = np.zeros(tokens.size, dtype=bool)
    is_eos[offsets[1:] - 1] = True
    tokens[is_eos] = eos_token_id
    tokens[~is_eos] = body
    return tokens, offsets


SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "sa", "vel", "dor", "pi", "quin", "zo", "mar", "bel", "tor", "ne", "gal",
             "fi", "ros", "da", "lum", "ver", "co", "sen", "tal", "mo", "ri", "pan", "xe", "hal", "du")
NOUNS = ("drill", "saw", "glove", "valve", "pump", "clamp", "cable", "filter", "sensor", "switch", "lamp", "hose",
         "wrench", "meter", "bolt", "socket", "fan", "brush", "tape", "jack")


def titled_dataset(n_items: int, *, n_users: int = 2_000, history: int = 5, items_per_brand: int = 50,
                   seed: int = 0):
    """A `rere.data.Dataset` of `n_items` title-like items and user sequences with structure
    a model can learn, for scale runs: titles are "<brand> <noun> <model number>" (a brand of
    two or three made-up syllables, ~50 items each); a user follows one brand through its
    model numbers, so the next item is that brand's next model. Splits "train" (`n_users`
    users), "valid" and "test" (a tenth as many each), `history` items per example; the
    number of users does not grow with the catalog, so per-step costs compare across sizes."""
    from rere.catalog import Catalog
    from rere.data.dataset import Dataset, Example

    if n_items < items_per_brand:
        raise ValueError(f"n_items must be at least items_per_brand={items_per_brand}, got {n_items}")
    rng = np.random.default_rng(seed)
    brands = -(-n_items // items_per_brand)
    names, seen = [], set()
    while len(names) < brands:  # distinct brand names
        name = "".join(rng.choice(SYLLABLES, size=rng.integers(2, 4))).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    nouns = rng.choice(NOUNS, size=n_items)
    titles = [f"{names[i // items_per_brand]} {nouns[i]} {100 + i % items_per_brand}" for i in range(n_items)]
    catalog = Catalog.from_lists([f"i{i}" for i in range(n_items)], titles)

    def users(count: int, prefix: str) -> list:
        brand = rng.integers(0, n_items // items_per_brand, size=count)
        start = rng.integers(0, items_per_brand - history, size=count)
        first = brand * items_per_brand + start
        return [Example(f"{prefix}{u}", tuple(f"i{first[u] + j}" for j in range(history)), f"i{first[u] + history}")
                for u in range(count)]

    splits = {"train": users(n_users, "u"), "valid": users(n_users // 10, "v"), "test": users(n_users // 10, "t")}
    return Dataset(catalog, splits, source=f"synthetic:titled:{n_items}:{seed}", category="tool")
