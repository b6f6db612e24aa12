"""The index the reference ReRe/D3 code builds, for comparison: a Python dict from the
'-'-joined token prefix to the list of allowed next tokens, looked up one beam at a time.

Written here from the ReRe/D3 papers' description of their constrained decoding (no reference code
is copied).
Run as a script to measure it at any size: `python benchmarks/reference_prefix_dict.py 1000000`.
"""
from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np


def build_prefix_dict(tokens: np.ndarray, offsets: np.ndarray) -> dict[str, list[int]]:
    table: dict[str, set[int]] = {}
    for i in range(len(offsets) - 1):
        seq = tokens[offsets[i]:offsets[i + 1]].tolist()
        for depth in range(len(seq)):
            table.setdefault("-".join(map(str, seq[:depth])), set()).add(seq[depth])
    return {key: list(nxt) for key, nxt in table.items()}


def allowed(table: dict[str, list[int]], prefixes: list[list[int]]) -> list[list[int]]:
    """What the reference logits processor does per step: one lookup per beam."""
    return [table.get("-".join(map(str, prefix)), []) for prefix in prefixes]


def measure(n_items: int) -> dict:
    """Build time, and the memory the dict holds once built (tracemalloc, separate run)."""
    from rere.synthetic import title_like_catalog

    tokens, offsets = title_like_catalog(n_items)
    start = time.perf_counter()
    table = build_prefix_dict(tokens, offsets)
    seconds = time.perf_counter() - start
    del table
    tracemalloc.start()
    table = build_prefix_dict(tokens, offsets)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"items": n_items, "keys": len(table), "build_s": seconds, "bytes": held, "peak_bytes": peak}


if __name__ == "__main__":
    print(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
