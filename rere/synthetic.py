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
