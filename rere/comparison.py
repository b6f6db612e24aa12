"""Two rankings of the same examples, compared: the mean difference of HR@K and NDCG@K with
a paired bootstrap 95% interval.

Paired: both runs ranked the same examples (the same split, and with `--limit` the same
draw; see `rere.data.dataset.sample_examples`), so the interval comes from resampling
examples, each carrying both runs' scores: the per-example noise that the two share
cancels. A difference whose interval excludes 0 is one the sample supports.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rere.catalog import Catalog
from rere.metrics import target_ranks

BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class PairedDifference:
    metric: str
    a: float  # mean over the examples
    b: float
    difference: float  # b - a
    low: float  # 2.5th percentile of the bootstrap differences
    high: float  # 97.5th
    examples: int


def paired_bootstrap(a: np.ndarray, b: np.ndarray, metric: str, *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> PairedDifference:
    """Mean of b - a over examples, with the percentile interval of its bootstrap."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equal, non-empty lists of per-example values; got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    diff = b - a
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # [1000, n] index blocks: bounded memory at any n
        rows = min(1000, resamples - start)
        means[start:start + rows] = diff[rng.integers(0, diff.size, size=(rows, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedDifference(metric, float(a.mean()), float(b.mean()), float(diff.mean()), float(low), float(high),
                            int(diff.size))


def read_rankings(path: str | os.PathLike) -> list[dict]:
    """rankings.jsonl lines (`rere evaluate` / `rere baseline` write them), or a run folder's."""
    path = Path(path)
    if path.is_dir():
        path = path / "rankings.jsonl"
    lines = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
                lines.append({"user": row["user"], "target": row["target"], "ranked": row["ranked"]})
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not a rankings line ({err})") from None
    return lines


def per_example(lines: list[dict], k: int, catalog: Catalog | None) -> dict[str, np.ndarray]:
    """HR@k and NDCG@k of every line. With a catalog a hit is any item sharing the target's
    identifier (as `rere evaluate` scores); without one, the target's own id."""
    if catalog is not None:
        ranked = [[catalog.index_of(item) if item is not None else -1 for item in line["ranked"]] for line in lines]
        ranks = target_ranks(ranked, [catalog.index_of(line["target"]) for line in lines], catalog)
    else:
        ranks = np.array([line["ranked"].index(line["target"]) if line["target"] in line["ranked"] else -1
                          for line in lines])
    hit = (ranks >= 0) & (ranks < k)
    return {f"hr@{k}": hit.astype(np.float64), f"ndcg@{k}": np.where(hit, 1 / np.log2(np.maximum(ranks, 0) + 2), 0.0)}


def compare_rankings(a: str | os.PathLike, b: str | os.PathLike, *, catalog: Catalog | None = None, k: int = 10,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[PairedDifference]:
    """HR@k and NDCG@k of run b minus run a, per metric, with paired bootstrap intervals."""
    first, second = read_rankings(a), read_rankings(b)
    if len(first) != len(second):
        raise ValueError(f"{a} ranks {len(first)} examples and {b} {len(second)}: not the same examples")
    for number, (x, y) in enumerate(zip(first, second), start=1):
        if (x["user"], x["target"]) != (y["user"], y["target"]):
            raise ValueError(f"line {number}: {a} has user {x['user']!r} / target {x['target']!r}, {b} has "
                             f"{y['user']!r} / {y['target']!r}: not the same examples in the same order")
    scores_a, scores_b = per_example(first, k, catalog), per_example(second, k, catalog)
    return [paired_bootstrap(scores_a[m], scores_b[m], m, resamples=resamples, seed=seed) for m in scores_a]


def as_json(differences: list[PairedDifference]) -> list[dict]:
    return [asdict(d) for d in differences]
