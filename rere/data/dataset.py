"""A prepared dataset: one catalog, splits of next-item examples, and the folder they live in.

Every loader in `rere.data` produces a `Dataset`; `rere prepare` writes it with `save`, and
the trainer, `rere evaluate` and `rere baseline` read it back with `Dataset.load`. The
folder (format "rere-dataset", version 1):

    dataset.json    {"format": "rere-dataset", "version": 1, "source": ..., "category": ...,
                     "item_kind": "title" | "semantic_id", "splits": {name: examples},
                     "options": {...how it was made}, "skipped": {reason: count}}
    catalog.json    {item_id: title or [semantic-ID tokens]}, in catalog order
    <split>.jsonl   one example a line: {"user": str, "history": [item_id, ...] (oldest
                    first), "target": item_id, "history_timestamps": [int, ...] (may be
                    empty), "timestamp": int | null}

Splits are named "train", "valid" and "test" (any of them may be missing: the shared ReRe
data has no train split). `save` writes into a temporary folder beside the destination
and renames it into place, so a failed run never leaves half a dataset behind.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rere.catalog import Catalog
from rere.files import check_format, write_folder_atomically

FORMAT, VERSION = "rere-dataset", 1
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Example:
    """One next-item prediction: the user's history (item ids, oldest first) and the item
    that came next."""

    user: str
    history: tuple[str, ...]
    target: str
    history_timestamps: tuple[int, ...] = ()
    timestamp: int | None = None

    def to_json(self) -> dict:
        return {"user": self.user, "history": list(self.history), "target": self.target,
                "history_timestamps": list(self.history_timestamps), "timestamp": self.timestamp}

    @classmethod
    def from_json(cls, row: dict) -> "Example":
        return cls(str(row["user"]), tuple(map(str, row["history"])), str(row["target"]),
                   tuple(int(t) for t in row.get("history_timestamps") or ()), row.get("timestamp"))


def sample_examples(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """`limit` examples drawn at random (seeded, without replacement), kept in split order;
    all of them when `limit` is None or not smaller. The first N rows of a split are one or
    two users (rows are grouped by user), so a prefix says little about the split. The
    one way rows are drawn: `rere evaluate --limit`, `rere baseline --limit`, the
    trainers' validation subsets and their `train_examples`."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=limit, replace=False))
    return [examples[i] for i in chosen]


@dataclass
class Dataset:
    """A catalog and its splits. `category` names the items in prompts ("industrial and
    scientific product", "movie", "business")."""

    catalog: Catalog
    splits: dict[str, list[Example]]
    source: str
    category: str = "item"
    options: dict = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, examples in self.splits.items():
            named = {item for example in examples for item in example.history}
            named.update(example.target for example in examples)
            if all(item in self.catalog for item in named):  # the common case: one check per distinct item
                continue
            for number, example in enumerate(examples):
                for item in (*example.history, example.target):
                    if item not in self.catalog:
                        raise ValueError(f"split {name!r}, example {number} (user {example.user!r}): "
                                         f"item {item!r} is not in the catalog")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name} {len(examples):,}" for name, examples in self.splits.items())
        return f"Dataset({self.source!r}, {len(self.catalog):,} {self.catalog.kind}s; {sizes})"

    def split(self, name: str) -> list[Example]:
        if name not in self.splits:
            raise KeyError(f"no split {name!r} in this dataset (it has: {', '.join(self.splits) or 'none'})")
        return self.splits[name]

    # -- on disk ------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the folder described in the module docstring, atomically."""
        folder = Path(folder)
        if folder.exists() and not overwrite:
            raise FileExistsError(f"{folder} exists; choose another folder or overwrite it")

        def fill(staging: Path) -> None:
            info = {"format": FORMAT, "version": VERSION, "source": self.source, "category": self.category,
                    "item_kind": self.catalog.kind, "items": len(self.catalog),
                    "splits": {name: len(examples) for name, examples in self.splits.items()},
                    "options": self.options, "skipped": self.skipped}
            (staging / "dataset.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
            catalog = {item: (list(ident) if isinstance(ident, tuple) else ident)
                       for item, ident in zip(self.catalog.ids, self.catalog.identifiers)}
            (staging / "catalog.json").write_text(json.dumps(catalog, ensure_ascii=False) + "\n")
            for name, examples in self.splits.items():
                with open(staging / f"{name}.jsonl", "w", encoding="utf-8") as f:
                    for example in examples:
                        f.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")

        return write_folder_atomically(folder, fill)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Dataset":
        folder = Path(folder)
        meta = folder / "dataset.json"
        if not meta.exists():
            raise FileNotFoundError(f"{folder} is not a prepared dataset (no dataset.json); make one with `rere prepare`")
        info = json.loads(meta.read_text())
        check_format(info, meta, FORMAT, VERSION)
        catalog = Catalog.from_json(folder / "catalog.json")
        splits = {}
        for name in info["splits"]:
            path = folder / f"{name}.jsonl"
            examples = []
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    try:
                        examples.append(Example.from_json(json.loads(line)))
                    except (ValueError, KeyError, TypeError) as err:
                        raise ValueError(f"{path}:{number}: not an example ({err})") from None
            splits[name] = examples
        return cls(catalog, splits, info["source"], info.get("category", "item"), info.get("options", {}),
                   info.get("skipped", {}))


class BadRows:
    """Malformed input rows: raise naming file and line, or (with `skip`) count them by reason."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.counts: dict[str, int] = {}

    def __call__(self, where: str, reason: str) -> None:
        """Report a bad row at `where` ("path:line"); returns only when skipping."""
        if not self.skip:
            raise ValueError(f"{where}: {reason} (pass --skip-bad to skip and count such rows)")
        key = reason.split(":")[0]
        self.counts[key] = self.counts.get(key, 0) + 1
