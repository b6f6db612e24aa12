"""What a model trains on (the baselines, the SID builder, the LLM trainers' windows): one
item sequence per user, and never the evaluated targets.

Split files hold sliding windows: a user with n interactions has rows whose histories
overlap (row r+1's history is row r's history plus row r's target, cut to the last 10
items). Counting rows would count an interaction up to ten times, so each user's rows are
merged back into one sequence (`merge_windows`).

With a "train" split the sequences are its rows (history + target) merged per user, and
the "valid" split (when it is not the evaluated one) is the early-stopping set.

Without one (a copy of the ReRe authors' data with only their valid and test splits, as in
this project's shared folder) the sequences come from the
histories of the rows themselves, never their targets, and only from the evaluated split
and those before it (SPLITS order; later splits are the future). Per user the merge stops
after the user's FIRST row of the evaluated split: later rows' histories hold that row's
target (in the shared Amazon Industrial test split, 2,549 of 4,533 targets reappear in the
same user's later test histories), so taking every history would train on the answers.
Everything kept was already visible as history in some evaluated row. Such training data
is small and overlaps the evaluation inputs, so `training_data` warns, and the warning
goes into the results. No split is then clean for early stopping (the valid targets sit
inside the test histories): `holdout_last` holds out each sequence's last item instead.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rere.catalog import Catalog
from rere.data.dataset import SPLITS, Dataset, Example


@dataclass(frozen=True)
class TrainingData:
    """Training sequences (item ids, oldest first, one per user) and where they came from.

    `validation` is a clean early-stopping split, or None when there is none (see
    `holdout_last`). `warning` is set when the sequences are not a real training split.
    """

    sequences: tuple[tuple[str, ...], ...]
    source: str
    validation: list[Example] | None = None
    validation_source: str | None = None
    warning: str | None = None

    def summary(self) -> dict:
        """JSON-ready description for the results file."""
        return {"source": self.source, "sequences": len(self.sequences),
                "interactions": sum(map(len, self.sequences)),
                "validation_split": self.validation_source, "warning": self.warning}


def training_data(dataset: Dataset, evaluated: str) -> TrainingData:
    """The sequences a baseline evaluated on split `evaluated` may train on (module docstring)."""
    dataset.split(evaluated)  # KeyError naming the splits present
    if evaluated == "train":
        raise ValueError("split 'train' is what baselines train on; evaluate on 'valid' or 'test'")
    if "train" in dataset.splits:
        windows = _by_user((e, (*e.history, e.target)) for e in dataset.splits["train"])
        sequences = tuple(merge_windows(w) for w in windows.values())
        clean = evaluated != "valid" and "valid" in dataset.splits
        return TrainingData(_nonempty(sequences), "split 'train' (history + target, merged per user)",
                            dataset.splits["valid"] if clean else None, "split 'valid'" if clean else None)

    order = [name for name in SPLITS if name in dataset.splits]
    used = order[: order.index(evaluated) + 1] if evaluated in order else [evaluated]
    rows = []  # (example, history, is evaluated): split order, then time order where known
    for name in used:
        examples = dataset.splits[name]
        if all(e.timestamp is not None for e in examples):
            examples = sorted(examples, key=lambda e: e.timestamp)  # stable: file order breaks ties
        rows += [(e, e.history, name == evaluated) for e in examples]
    sequences = []
    for user_rows in _by_user((e, (history, last)) for e, history, last in rows).values():
        kept = []
        for history, last in user_rows:
            kept.append(history)
            if last:
                break
        sequences.append(merge_windows(kept))
    source = (f"histories of split(s) {', '.join(used)} (no train split; targets never used; "
              f"each user's rows merged and cut after their first {evaluated!r} row)")
    warning = (f"no 'train' split: baselines train on the HISTORIES of the {', '.join(used)} rows, not on a "
               f"training split; results are not comparable with papers' train-split baselines")
    warnings.warn(warning, stacklevel=2)
    return TrainingData(_nonempty(tuple(sequences)), source, None, None, warning)


def merge_windows(windows: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """One sequence from overlapping windows in time order: each window is appended minus
    its longest prefix that repeats the end of what is already there."""
    merged: list[str] = []
    for window in windows:
        window = list(window)
        overlap = next((m for m in range(min(len(merged), len(window)), 0, -1)
                        if merged[-m:] == window[:m]), 0)
        merged += window[overlap:]
    return tuple(merged)


def holdout_last(sequences: Iterable[Sequence[str]]) -> tuple[tuple[tuple[str, ...], ...], list[Example]]:
    """Early stopping without a clean split: each sequence of 2+ items loses its last item,
    which becomes a validation example (the rest is its history). Returns (shortened
    sequences, examples); users are named by their sequence's index."""
    kept, held = [], []
    for number, sequence in enumerate(sequences):
        sequence = tuple(sequence)
        if len(sequence) >= 2:
            held.append(Example(f"sequence-{number}", sequence[:-1], sequence[-1]))
            sequence = sequence[:-1]
        kept.append(sequence)
    return tuple(kept), held


def item_counts(sequences: Iterable[Sequence[str]], catalog: Catalog) -> np.ndarray:
    """int64 [len(catalog)]: occurrences of each item in the sequences."""
    counts = np.zeros(len(catalog), dtype=np.int64)
    positions = [catalog.index_of(item) for sequence in sequences for item in sequence]
    np.add.at(counts, np.asarray(positions, dtype=np.int64), 1)
    return counts


def _by_user(rows) -> dict[str, list]:
    """(example, value) pairs -> {user: [value, ...]} in the order given."""
    grouped: dict[str, list] = {}
    for example, value in rows:
        grouped.setdefault(example.user, []).append(value)
    return grouped


def _nonempty(sequences: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
    kept = tuple(s for s in sequences if s)
    if not kept:
        raise ValueError("no training sequences: every training row is empty")
    return kept
