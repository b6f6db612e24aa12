"""Most-popular: every user gets the items seen most often in the training sequences.

The floor any personalised recommender must beat, and the reference for popularity bias.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from rere.data.training_sequences import item_counts
from rere.catalog import Catalog
from rere.data.dataset import Example


class Popularity:
    """Ranks the whole catalog by training count, ties broken by catalog position.

    By default a user's own history items stay in the list, as in the LLM's evaluation
    (constrained beam search may generate them too, and a repurchase is a hit); pass
    `exclude_history=True` to drop them, as `rere evaluate --exclude-history` does.
    """

    def __init__(self, catalog: Catalog, exclude_history: bool = False):
        self.catalog = catalog
        self.exclude_history = exclude_history
        self.counts: np.ndarray | None = None
        self.order: np.ndarray | None = None

    def fit(self, sequences: Iterable[Sequence[str]]) -> "Popularity":
        """Count the items of the training sequences."""
        self.counts = item_counts(sequences, self.catalog)
        self.order = np.argsort(-self.counts, kind="stable")
        return self

    def rank(self, examples: Sequence[Example], k: int) -> np.ndarray:
        """int64 [len(examples), k] catalog positions, best first. With `exclude_history`, a
        list runs short only if the history covers all but fewer than k items; its empty
        slots are -1."""
        if self.order is None:
            raise ValueError("Popularity.rank before fit")
        if k < 1 or k > len(self.catalog):
            raise ValueError(f"k must be in 1..{len(self.catalog)} (the catalog size), got {k}")
        if not self.exclude_history:
            return np.tile(self.order[:k], (len(examples), 1))
        ranked = np.full((len(examples), k), -1, dtype=np.int64)
        for row, example in enumerate(examples):
            seen = {self.catalog.index_of(item) for item in example.history}
            top = [i for i in self.order[: k + len(seen)].tolist() if i not in seen][:k]
            ranked[row, : len(top)] = top
        return ranked
