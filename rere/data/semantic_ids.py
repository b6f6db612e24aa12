"""Semantic-ID catalogs: MiniOneRec-style `index.json` (`{item_id: ["<a_236>", "<b_231>",
"<c_226>"]}`), with the examples of another dataset of the same items.

An `index.json` holds the catalog only, so the examples come from a dataset over the same
items: a prepared folder or a ReRe CSV folder. Their item ids may number the items
differently (the shared MiniOneRec and ReRe files do), so items are matched by id, or by
title through MiniOneRec's `item.json` (`{item_id: {"title": ...}}`). Items that share a
title are matched in file order (the k-th such item of one file to the k-th of the other),
and counted in `options["ambiguous_titles"]`.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from rere.catalog import Catalog
from rere.data.dataset import Dataset, Example

NAME = "sid"
HELP = "a semantic-ID catalog (index.json) with the examples of a dataset of the same items"


def load_semantic_ids(index_json: str | Path, examples_from: Dataset, match: str = "id",
                      item_json: str | Path | None = None) -> Dataset:
    catalog = Catalog.from_json(index_json)
    if catalog.kind != "semantic_id":
        raise ValueError(f"{index_json}: holds titles, not semantic IDs (expected {{item_id: [token, ...]}})")
    if match == "id":
        mapping, ambiguous = {item: item for item in examples_from.catalog.ids}, 0
    elif match == "title":
        if item_json is None:
            raise ValueError("match='title' needs item_json (MiniOneRec's item.json with each item's title)")
        mapping, ambiguous = _match_titles(examples_from.catalog, catalog, item_json)
    else:
        raise ValueError(f"match must be 'id' or 'title', got {match!r}")

    def convert(item: str, where: str) -> str:
        new = mapping.get(item)
        if new is None or new not in catalog:
            raise ValueError(f"{where}: item {item!r} has no semantic ID in {index_json}")
        return new

    splits = {}
    for name, examples in examples_from.splits.items():
        splits[name] = [Example(e.user, tuple(convert(i, f"split {name!r}, example {n}") for i in e.history),
                                convert(e.target, f"split {name!r}, example {n}"), e.history_timestamps, e.timestamp)
                        for n, e in enumerate(examples)]
    options = {"index_json": str(index_json), "examples_from": examples_from.source, "match": match,
               "ambiguous_titles": ambiguous}
    return Dataset(catalog, splits, source=f"{NAME}:{Path(index_json).resolve()}", category=examples_from.category,
                   options=options, skipped=dict(examples_from.skipped))


def _match_titles(titled: Catalog, sids: Catalog, item_json) -> tuple[dict[str, str], int]:
    with open(item_json, encoding="utf-8") as f:
        meta = json.load(f)
    by_title = defaultdict(list)
    for item in sids.ids:
        if item not in meta or not isinstance(meta[item], dict) or "title" not in meta[item]:
            raise ValueError(f"{item_json}: no title for item {item!r}")
        by_title[meta[item]["title"]].append(item)
    used = defaultdict(int)
    mapping, ambiguous = {}, 0
    for item, title in zip(titled.ids, titled.identifiers):
        candidates = by_title.get(title, [])
        if used[title] < len(candidates):
            mapping[item] = candidates[used[title]]
            ambiguous += len(candidates) > 1
            used[title] += 1
    return mapping, ambiguous


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index_json", help="{item_id: [semantic-ID tokens]} (MiniOneRec's index.json)")
    parser.add_argument("--examples", required=True,
                        help="the examples: a prepared dataset folder, or a ReRe CSV folder, of the same items")
    parser.add_argument("--match", choices=("id", "title"), default="id",
                        help="match items by id, or by title through --items (default: id)")
    parser.add_argument("--items", help="MiniOneRec's item.json ({item_id: {title, ...}}), for --match title")


def from_args(args: argparse.Namespace) -> Dataset:
    from rere.data.rere_csv import load_rere_csv

    folder = Path(args.examples)
    source = Dataset.load(folder) if (folder / "dataset.json").exists() else load_rere_csv(folder, skip_bad=args.skip_bad)
    return load_semantic_ids(args.index_json, source, args.match, args.items)
