"""Interactions -> next-item examples: the preprocessing every raw-data loader shares.

The D3/ReRe recipe (their `process.py`), written once:

1. keep interactions inside the time window (`start <= t <= end`, both ends included, as in D3);
2. iterative k-core: drop users and items with fewer than `min_count` interactions, and
   repeat, because each removal lowers other counts, until nothing changes;
3. per user, interactions in time order, equal timestamps in the order of the source file;
   one example per interaction after the first, the history being up to `max_history`
   previous items, oldest first;
4. all examples sorted by target timestamp and cut 80/10/10 into train/valid/test (a global
   chronological split: no test example precedes a training one). The sort is stable over
   examples listed user by user (users in order of first appearance in the file), which is
   the order D3 produces, so equal timestamps fall the same way as in their data.

The catalog holds the surviving items in order of first appearance in the file, under the
source's own ids. (D3 instead numbers the items 0..n-1 after shuffling them with seed 42.)
Loaders read their files into `Interactions` plus a title per item, and call `build_dataset`.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import re
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rere.catalog import Catalog
from rere.data.dataset import SPLITS, BadRows, Dataset, Example

PROGRESS_MIN_BYTES = 50_000_000  # smaller files read in a second or two: no progress bar
_DATE = re.compile(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?")


def parse_time(value: str | int | None) -> int | None:
    """Unix seconds from an int, a string of digits (unix seconds; exactly four digits is a
    year), a date "YYYY", "YYYY-MM" or "YYYY-MM-DD", or an ISO date-time; dates and naive
    times are UTC, so a window means the same on every machine."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip()
    if text.isdigit() and len(text) != 4:
        return int(text)
    date = _DATE.fullmatch(text)
    try:
        if date:
            year, month, day = (int(part or 1) for part in date.groups())
            moment = datetime(year, month, day)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a time: give unix seconds or a date like 2018-10-01") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


@dataclass(frozen=True)
class Sequencing:
    """How interactions become examples (see the module docstring). `start` and `end` take
    anything `parse_time` does and are stored as unix seconds."""

    min_count: int = 5
    max_history: int = 10
    start: int | str | None = None
    end: int | str | None = None
    split: tuple[float, ...] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", parse_time(self.start))
        object.__setattr__(self, "end", parse_time(self.end))
        object.__setattr__(self, "split", tuple(float(r) for r in self.split))
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1 (1 keeps everything), got {self.min_count}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be at least 1, got {self.max_history}")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"the time window starts ({self.start}) after it ends ({self.end})")
        if len(self.split) != len(SPLITS) or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"split must be {len(SPLITS)} non-negative fractions ({'/'.join(SPLITS)}) "
                             f"summing to 1, got {self.split}")

    def as_options(self) -> dict:
        """The settings, for `Dataset.options`."""
        return {"min_count": self.min_count, "max_history": self.max_history, "start": self.start,
                "end": self.end, "split": dict(zip(SPLITS, self.split))}


class Interactions:
    """(user, item, timestamp) rows in file order, kept as integer codes (24 bytes a row)
    so that Yelp's millions of reviews fit in memory."""

    def __init__(self) -> None:
        self.user_codes: dict[str, int] = {}
        self.item_codes: dict[str, int] = {}
        self._users, self._items, self._times = array("q"), array("q"), array("q")

    def __len__(self) -> int:
        return len(self._times)

    def add(self, user: str, item: str, timestamp: int) -> None:
        self._users.append(self.user_codes.setdefault(user, len(self.user_codes)))
        self._items.append(self.item_codes.setdefault(item, len(self.item_codes)))
        self._times.append(timestamp)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """User codes, item codes and timestamps, one entry per row (int64)."""
        return tuple(np.frombuffer(a, dtype=np.int64).copy() for a in (self._users, self._items, self._times))


def build_dataset(interactions: Interactions, titles: Mapping[str, str], sequencing: Sequencing, *,
                  source: str, category: str, options: dict, skipped: dict[str, int]) -> Dataset:
    """The dataset of `interactions` (every item must have a title). `options` (what the
    loader read) and `skipped` (rows it dropped, by reason) are completed with this step's
    settings and drops."""
    users, items, times = interactions.arrays()
    in_window = _window(times, sequencing.start, sequencing.end)
    kept = k_core(users, items, in_window, sequencing.min_count)
    drops = {"outside the time window": int((~in_window).sum()),
             f"user or item with fewer than {sequencing.min_count} interactions (k-core)":
                 int(in_window.sum() - kept.sum())}
    rows = np.flatnonzero(kept)
    if not len(rows):
        raise ValueError(f"no interactions left out of {len(interactions):,} read "
                         f"({drops}); widen the time window or lower min_count")
    user_names, item_names = list(interactions.user_codes), list(interactions.item_codes)
    examples = make_examples(users, items, times, rows, user_names, item_names, sequencing.max_history)
    splits = split_by_time(examples, sequencing.split)
    catalog_ids = [item_names[code] for code in _first_appearance(items[rows])]
    catalog = Catalog.from_lists(catalog_ids, [titles[item] for item in catalog_ids])
    skipped = {reason: count for reason, count in {**skipped, **drops}.items() if count}
    return Dataset(catalog, splits, source=source, category=category,
                   options={**options, **sequencing.as_options()}, skipped=skipped)


def k_core(users: np.ndarray, items: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """`keep` narrowed until every kept user and item has at least k kept rows. One pass is
    not enough: dropping a sparse user can push an item below k, and so on."""
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        narrowed = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if narrowed.sum() == keep.sum():
            return keep
        keep = narrowed


def make_examples(users: np.ndarray, items: np.ndarray, times: np.ndarray, rows: np.ndarray,
                  user_names: Sequence[str], item_names: Sequence[str], max_history: int) -> list[Example]:
    """One example per row of `rows` that is not its user's first, listed user by user
    (users in order of first appearance), each user's rows in time order with ties in file
    order."""
    user_order = _first_appearance(users[rows])
    user_rank = np.empty(len(user_names), dtype=np.int64)
    user_rank[user_order] = np.arange(len(user_order))
    ordered = rows[np.lexsort((rows, times[rows], user_rank[users[rows]]))]
    starts = np.flatnonzero(np.diff(users[ordered], prepend=-1))
    examples = []
    for sequence in np.split(ordered, starts[1:]):
        user = user_names[users[sequence[0]]]
        ids = [item_names[code] for code in items[sequence]]
        stamps = times[sequence].tolist()
        for j in range(1, len(sequence)):
            first = max(0, j - max_history)
            examples.append(Example(user, tuple(ids[first:j]), ids[j], tuple(stamps[first:j]), stamps[j]))
    return examples


def split_by_time(examples: list[Example], fractions: Sequence[float]) -> dict[str, list[Example]]:
    """Train/valid/test by target time, cut where D3 cuts (`int(n * 0.8)`, `int(n * 0.9)`).
    The sort is stable, so examples with equal timestamps keep their given order and the
    cut falls the same way on every run."""
    ordered = sorted(examples, key=lambda example: example.timestamp)
    # The epsilon keeps float noise from moving a cut: 0.7 + 0.2 is 0.8999999999999999.
    cuts = [int(len(ordered) * sum(fractions[:i + 1]) + 1e-9) for i in range(len(fractions) - 1)]
    bounds = [0, *cuts, len(ordered)]
    return {name: ordered[lo:hi] for name, lo, hi in zip(SPLITS, bounds, bounds[1:])}


def _window(times: np.ndarray, start: int | None, end: int | None) -> np.ndarray:
    keep = np.ones(len(times), dtype=bool)
    if start is not None:
        keep &= times >= start
    if end is not None:
        keep &= times <= end
    return keep


def _first_appearance(codes: np.ndarray) -> np.ndarray:
    """The distinct codes, in order of first appearance."""
    distinct, first = np.unique(codes, return_index=True)
    return distinct[np.argsort(first)]


# -- reading files --------------------------------------------------------------------------

def require_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path, or FileNotFoundError saying which file was expected there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {what})")
    return path


def read_lines(path: Path, description: str) -> Iterator[tuple[str, bytes]]:
    """("path:line", line without its end) for each non-blank line of a plain or gzip file,
    streamed, with a progress bar over the bytes on disk for large files."""
    size = path.stat().st_size
    with open(path, "rb") as raw, tqdm(total=size, desc=description, unit="B", unit_scale=True,
                                       disable=size < PROGRESS_MIN_BYTES) as progress:
        lines = gzip.open(raw) if path.name.endswith(".gz") else raw
        for number, line in enumerate(lines, start=1):
            if number % 100_000 == 0:
                progress.update(raw.tell() - progress.n)
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield f"{path}:{number}", line
        progress.update(size - progress.n)


def add_title(titles: dict[str, str], item: str, title: str, where: str, bad: BadRows) -> None:
    """Record an item's title. A repeated id with the same title is the same item (the
    RecBole MovieLens files repeat some); with another title it is a bad row."""
    if not title.strip():
        bad(where, f"empty title: item {item!r}")
    elif titles.setdefault(item, title) != title:
        bad(where, f"duplicate item: {item!r} is titled {titles[item]!r} earlier and {title!r} here")


def parse_object(line: bytes, python_literals: bool = False) -> dict:
    """One JSON object; with `python_literals`, a Python dict literal is accepted too (older
    Amazon metadata dumps are written that way)."""
    try:
        row = json.loads(line)
    except ValueError as err:
        if not python_literals:
            raise ValueError(f"bad JSON: {err}") from None
        try:
            row = ast.literal_eval(line.decode("utf-8"))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"bad JSON: {err} (nor is it a Python literal)") from None
    if not isinstance(row, dict):
        raise ValueError(f"bad JSON: expected an object, got {type(row).__name__}")
    return row


def field(row: dict, name: str) -> object:
    """row[name], or ValueError when it is missing or null."""
    if row.get(name) is None:
        raise ValueError(f"missing field: {name!r}")
    return row[name]


def to_timestamp(value: object) -> int:
    """Unix seconds from a number or a numeric string, else ValueError."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"bad timestamp: {value!r} is not a number") from None


# -- command line ---------------------------------------------------------------------------

def add_sequence_arguments(parser: argparse.ArgumentParser) -> None:
    """The `Sequencing` options, shared by every raw-data source."""
    defaults = Sequencing()
    group = parser.add_argument_group("sequences")
    group.add_argument("--min-count", type=int, default=defaults.min_count,
                       help="k-core: drop users and items with fewer interactions, repeatedly (default %(default)s)")
    group.add_argument("--max-history", type=int, default=defaults.max_history,
                       help="history items per example, most recent kept (default %(default)s)")
    group.add_argument("--start", type=_time_argument, help="drop interactions before this time "
                       "(unix seconds or a UTC date like 2017-10 or 2017-10-01; included)")
    group.add_argument("--end", type=_time_argument,
                       help="drop interactions after this time (included; a date means its first second)")
    group.add_argument("--split", type=float, nargs=len(SPLITS), default=defaults.split,
                       metavar=tuple(s.upper() for s in SPLITS),
                       help="fractions of examples, by target time (default %(default)s)")


def _time_argument(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def sequence_options(args: argparse.Namespace) -> dict:
    """The loaders' keyword arguments for the options `add_sequence_arguments` added."""
    return {"min_count": args.min_count, "max_history": args.max_history, "start": args.start, "end": args.end,
            "split": tuple(args.split)}
