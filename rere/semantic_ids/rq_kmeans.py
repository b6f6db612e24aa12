"""Residual quantisation by balanced k-means (RQ-KMeans): item embeddings -> code paths.

Level 1 clusters the embeddings into K groups; its code is the item's group. Level 2
clusters what level 1 left unexplained (each embedding minus its group's centre), and so
on for L levels. Items whose L codes still coincide get one more code, their rank in the
group (0, 1, ...), appended to every item so that all SIDs have the same length.

Balanced: plain k-means on skewed embeddings puts most items in a few groups, wasting
codes and making collisions; here every group holds at most `ceil(balance * n / K)`
items. scikit-learn's k-means (k-means++ start) gives the first centres; then a few rounds
of capacity-constrained assignment (`balanced_assign`) and centre updates. Deterministic
for a seed.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

BALANCED_ROUNDS = 5  # assignment / centre-update rounds after k-means


@dataclass
class SemanticIdCodes:
    """Codes `[n, L]` (plus the disambiguating column when `disambiguated`) and statistics."""

    codes: np.ndarray  # int64 [n_items, levels (+1)]
    codebook_size: int
    disambiguated: bool  # whether a last code separates items whose level codes collide
    report: dict = field(default_factory=dict)

    def tokens(self, letters: str = "abcdefghijklmnopqrstuvwxyz") -> list[tuple[str, ...]]:
        """MiniOneRec-style tokens, one letter a level: ("<a_12>", "<b_3>", "<c_200>")."""
        if self.codes.shape[1] > len(letters):
            raise ValueError(f"{self.codes.shape[1]} levels but only {len(letters)} level letters")
        return [tuple(f"<{letters[level]}_{code}>" for level, code in enumerate(row)) for row in self.codes.tolist()]


def balanced_assign(distances: np.ndarray, capacity: int) -> np.ndarray:
    """Each row (item) to a column (group) with at most `capacity` rows a column, greedily
    by distance: every unassigned item proposes to its nearest group with room left, each
    group keeps its nearest proposers up to its room, and the others propose again. At most
    one round per group; ties go to the lower item index."""
    n, groups = distances.shape
    if capacity * groups < n:
        raise ValueError(f"{groups} groups of at most {capacity} cannot hold {n} items")
    work = distances.astype(np.float64, copy=True)
    assignment = np.full(n, -1, dtype=np.int64)
    room = np.full(groups, capacity, dtype=np.int64)
    free = np.arange(n)
    while free.size:
        choice = work[free].argmin(axis=1)
        order = np.lexsort((free, work[free, choice], choice))  # by group, then distance, then item
        chosen = choice[order]
        first = np.searchsorted(chosen, chosen, side="left")
        accepted = (np.arange(order.size) - first) < room[chosen]
        assignment[free[order[accepted]]] = chosen[accepted]
        room -= np.bincount(chosen[accepted], minlength=groups)
        work[:, room == 0] = np.inf
        free = np.sort(free[order[~accepted]])
    return assignment


def balanced_kmeans(points: np.ndarray, groups: int, *, balance: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(assignment [n], centres [groups, d]) with at most ceil(balance * n / groups) a group."""
    from sklearn.cluster import KMeans

    n = points.shape[0]
    groups = min(groups, n)
    capacity = max(1, math.ceil(balance * n / groups))
    centres = KMeans(n_clusters=groups, n_init=1, random_state=seed).fit(points).cluster_centers_
    assignment = None
    for _ in range(BALANCED_ROUNDS):
        new = balanced_assign(_squared_distances(points, centres), capacity)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        sums = np.zeros_like(centres)
        np.add.at(sums, assignment, points)
        counts = np.bincount(assignment, minlength=groups)[:, None]
        centres = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    return assignment, centres


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[n, groups] squared distances, through one matmul (no [n, groups, d] temporary)."""
    return (points ** 2).sum(1)[:, None] - 2 * points @ centres.T + (centres ** 2).sum(1)[None]


def rq_kmeans(embeddings: np.ndarray, *, levels: int = 3, codebook_size: int = 256, balance: float = 1.0,
              seed: int = 0) -> SemanticIdCodes:
    """Semantic IDs of the rows of `embeddings` [n, d] (module docstring)."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be [items, dim] with items > 0, got shape {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        bad = int(np.argwhere(~np.isfinite(embeddings))[0][0])
        raise ValueError(f"embedding of item {bad} holds NaN or inf")
    if levels < 1 or codebook_size < 2 or balance < 1.0:
        raise ValueError(f"need levels >= 1, codebook_size >= 2 and balance >= 1 (got {levels}, {codebook_size}, "
                         f"{balance})")
    residual = embeddings.astype(np.float64)
    total = float((residual ** 2).sum()) or 1.0
    codes, used, explained = [], [], []
    for level in range(levels):
        assignment, centres = balanced_kmeans(residual, codebook_size, balance=balance, seed=seed + level)
        codes.append(assignment)
        residual = residual - centres[assignment]
        used.append(int(np.unique(assignment).size))
        explained.append(round(1 - float((residual ** 2).sum()) / total, 4))
    codes = np.stack(codes, axis=1)
    groups = Counter(map(tuple, codes.tolist()))
    shared = sum(size for size in groups.values() if size > 1)
    disambiguated = shared > 0
    if disambiguated:
        rank: Counter = Counter()
        extra = np.empty(len(codes), dtype=np.int64)
        for i, path in enumerate(map(tuple, codes.tolist())):
            extra[i] = rank[path]
            rank[path] += 1
        codes = np.concatenate([codes, extra[:, None]], axis=1)
    report = {
        "items": int(len(codes)), "levels": levels, "codebook_size": codebook_size, "balance": balance, "seed": seed,
        "codes_used_per_level": used, "utilisation_per_level": [round(u / codebook_size, 4) for u in used],
        "variance_explained_after_level": explained,
        "items_sharing_their_level_codes": shared, "largest_shared_group": max(groups.values()),
        "disambiguating_code": disambiguated,
    }
    return SemanticIdCodes(codes.astype(np.int64), codebook_size, disambiguated, report)
