"""The CSV files the ReRe/D3 code produces (and that the ReRe authors publish).

A catalog file of `title<TAB>item_id` lines (`info.txt`), and one CSV per split with the
columns `user_id, item_asins, item_asin, history_item_id, item_id, history_item_title,
item_title, history_rating, rating, history_timestamp, timestamp`, list-valued columns
written as Python literals. Either layout is found:

    FOLDER/info.txt, FOLDER/{train,valid,test}.csv             (../shared/data/amazon-industrial-rere)
    FOLDER/info/*.txt, FOLDER/{train,valid,test}/*.csv         (the ReRe repository's data/<Category>/)

Each row is checked against the catalog (ids exist, the titles in the row are the
catalog's titles for those ids, history lists have matching lengths).
"""
from __future__ import annotations

import argparse
import ast
import csv
from pathlib import Path

from rere.catalog import Catalog
from rere.data.dataset import SPLITS, BadRows, Dataset, Example

NAME = "rere-csv"
HELP = "the ReRe/D3 CSV files (info.txt + train/valid/test .csv)"
LIST_COLUMNS = ("history_item_id", "history_item_title")
REQUIRED = ("user_id", "history_item_id", "item_id", "history_item_title", "item_title")


def find_files(folder: str | Path) -> tuple[Path, dict[str, Path]]:
    """The catalog file and the split files present in `folder` (either layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (expected info.txt and train/valid/test .csv files)")
    catalog = folder / "info.txt"
    if not catalog.exists():
        found = sorted((folder / "info").glob("*.txt")) if (folder / "info").is_dir() else []
        if len(found) != 1:
            raise FileNotFoundError(f"{folder}: no catalog (expected info.txt, or exactly one info/*.txt)")
        catalog = found[0]
    splits = {}
    for name in SPLITS:
        flat = folder / f"{name}.csv"
        nested = sorted((folder / name).glob("*.csv")) if (folder / name).is_dir() else []
        if flat.exists():
            splits[name] = flat
        elif len(nested) == 1:
            splits[name] = nested[0]
        elif len(nested) > 1:
            raise ValueError(f"{folder / name}: {len(nested)} CSV files; expected one")
    if not splits:
        raise FileNotFoundError(f"{folder}: no split files (expected train.csv, valid.csv or test.csv)")
    return catalog, splits


def load_rere_csv(folder: str | Path, category: str = "item", skip_bad: bool = False) -> Dataset:
    """The catalog and every split found in `folder` (see the module docstring)."""
    catalog_path, split_paths = find_files(folder)
    catalog = Catalog.from_tsv(catalog_path)
    bad = BadRows(skip_bad)
    splits = {name: read_split(path, catalog, bad) for name, path in split_paths.items()}
    return Dataset(catalog, splits, source=f"{NAME}:{Path(folder).resolve()}", category=category,
                   options={"files": {"catalog": str(catalog_path), **{k: str(v) for k, v in split_paths.items()}}},
                   skipped=bad.counts)


def read_split(path: Path, catalog: Catalog, bad: BadRows) -> list[Example]:
    examples = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {', '.join(missing)} (have: {', '.join(reader.fieldnames or ())})")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                examples.append(_example(row, catalog))
            except ValueError as err:
                bad(where, str(err))
    return examples


def _example(row: dict, catalog: Catalog) -> Example:
    if None in row or any(value is None for value in row.values()):
        raise ValueError("wrong column count: the row does not have one value per header column")
    history = [str(i) for i in _literal_list(row, "history_item_id")]
    titles = _literal_list(row, "history_item_title")
    if len(history) != len(titles):
        raise ValueError(f"history lists differ in length: {len(history)} ids, {len(titles)} titles")
    target = row["item_id"].strip()
    for item, title in [*zip(history, titles), (target, row["item_title"])]:
        if item not in catalog:
            raise ValueError(f"unknown item: id {item!r} is not in the catalog")
        if title != catalog.identifiers[catalog.index_of(item)]:
            raise ValueError(f"title mismatch: item {item!r} is {catalog.identifiers[catalog.index_of(item)]!r} "
                             f"in the catalog but {title!r} here")
    stamps = _literal_list(row, "history_timestamp") if row.get("history_timestamp") else []
    timestamp = row.get("timestamp")
    return Example(row["user_id"], tuple(history), target, tuple(int(float(s)) for s in stamps),
                   int(float(timestamp)) if timestamp else None)


def _literal_list(row: dict, column: str) -> list:
    try:
        value = ast.literal_eval(row[column])
    except (ValueError, SyntaxError):
        raise ValueError(f"unparsable list: column {column} holds {row[column][:60]!r}") from None
    if not isinstance(value, list):
        raise ValueError(f"unparsable list: column {column} holds a {type(value).__name__}, not a list")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder with info.txt and train/valid/test .csv (or info/, train/, ... subfolders)")
    parser.add_argument("--category", default="item",
                        help='what the items are, for prompts (e.g. "industrial and scientific product")')


def from_args(args: argparse.Namespace) -> Dataset:
    return load_rere_csv(args.folder, category=args.category, skip_bad=args.skip_bad)
