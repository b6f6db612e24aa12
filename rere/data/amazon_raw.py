"""Raw Amazon Reviews 2018 (McAuley lab) with the D3/ReRe preprocessing.

Two files of one object a line (plain or .gz): reviews `{Category}_5.json` (`reviewerID`,
`asin`, `unixReviewTime`, ...) and metadata `meta_{Category}.json` (`asin`, `title`, ...).
Some metadata dumps hold Python-literal dicts rather than JSON; both are read.

Titles are cleaned as D3 does (`&quot;` -> `"`, `&amp;` -> `&`, surrounding spaces and
quotes stripped), and an item is dropped when its title is missing or shorter than two
characters, has more than 20 words (counted as D3 does, by single spaces), or contains
HTML. Reviews of items without a valid title are dropped; the rest goes through
`rere.data.sequences` (time window, 5-core, histories of 10, 80/10/10 split by time).
"""
from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from rere.data.dataset import BadRows, Dataset
from rere.data.sequences import (Interactions, Sequencing, add_sequence_arguments, add_title, build_dataset, field,
                                 parse_object, read_lines, require_file, sequence_options, to_timestamp)

NAME = "amazon"
HELP = "raw Amazon Reviews 2018 ({Category}_5.json + meta_{Category}.json), preprocessed as D3/ReRe do"
MAX_TITLE_WORDS = 20
_HTML = re.compile(r"</|<[a-zA-Z][a-zA-Z0-9]*(?:\s|/?>)")  # "</", "<br>", "<span id=...", not "a<b"
_FILE_CATEGORY = re.compile(r"(?:reviews_|meta_)?(.+?)(?:_5)?\.json(?:\.gz)?")


def load_amazon(reviews: str | Path, meta: str | Path, *, category: str | None = None, min_count: int = 5,
                max_history: int = 10, start: int | str | None = None, end: int | str | None = None,
                split: tuple[float, ...] = (0.8, 0.1, 0.1), skip_bad: bool = False) -> Dataset:
    """The dataset of one category. `category` names the items in prompts; by default it
    comes from the reviews file's name ("Industrial_and_Scientific_5.json" -> "industrial
    and scientific product"). The other options are `Sequencing`'s."""
    reviews = require_file(reviews, "an Amazon reviews file such as Industrial_and_Scientific_5.json")
    meta = require_file(meta, "an Amazon metadata file such as meta_Industrial_and_Scientific.json")
    sequencing = Sequencing(min_count, max_history, start, end, split)
    bad = BadRows(skip_bad)
    titles, dropped = read_titles(meta, bad)
    interactions, untitled = read_reviews(reviews, titles, bad)
    return build_dataset(interactions, titles, sequencing, source=f"{NAME}:{reviews.resolve()}",
                         category=category or category_from_file_name(reviews),
                         options={"files": {"reviews": str(reviews), "meta": str(meta)}},
                         skipped={**bad.counts, **dropped, "review of an item without a valid title": untitled})


def read_titles(path: Path, bad: BadRows) -> tuple[dict[str, str], dict[str, int]]:
    """{asin: cleaned title} of the items that pass the title rules, and how many metadata
    rows each rule dropped."""
    titles: dict[str, str] = {}
    dropped: Counter[str] = Counter()
    for where, line in read_lines(path, "reading item titles"):
        try:
            row = parse_object(line, python_literals=True)
            item = str(field(row, "asin"))
        except ValueError as err:
            bad(where, str(err))
            continue
        title, problem = clean_title(row.get("title"))
        if problem:
            dropped[problem] += 1
        else:
            add_title(titles, item, title, where, bad)
    return titles, dict(dropped)


def read_reviews(path: Path, titles: dict[str, str], bad: BadRows) -> tuple[Interactions, int]:
    """The reviews of titled items, in file order, and how many reviews had untitled items."""
    interactions = Interactions()
    untitled = 0
    for where, line in read_lines(path, "reading reviews"):
        try:
            row = parse_object(line)
            user, item = str(field(row, "reviewerID")), str(field(row, "asin"))
            timestamp = to_timestamp(field(row, "unixReviewTime"))
        except ValueError as err:
            bad(where, str(err))
            continue
        if item in titles:
            interactions.add(user, item, timestamp)
        else:
            untitled += 1
    return interactions, untitled


def clean_title(raw: object) -> tuple[str, str | None]:
    """D3's cleaning of a title, and the reason to drop it (None to keep it)."""
    title = raw if isinstance(raw, str) else ""
    title = title.replace("&quot;", '"').replace("&amp;", "&").strip().strip('"').strip()
    if _HTML.search(title):
        return title, "item title with HTML"
    if len(title) < 2:
        return title, "item title missing or shorter than 2 characters"
    if len(title.split(" ")) > MAX_TITLE_WORDS:
        return title, f"item title over {MAX_TITLE_WORDS} words"
    return title, None


def category_from_file_name(path: str | Path) -> str:
    """"Industrial_and_Scientific_5.json" -> "industrial and scientific product" (prompts
    say "{category}s")."""
    match = _FILE_CATEGORY.fullmatch(Path(path).name)
    words = match.group(1).replace("_", " ").strip().lower() if match else ""
    return f"{words} product" if words else "product"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reviews", help="reviews, e.g. Industrial_and_Scientific_5.json (.json.gz too)")
    parser.add_argument("meta", help="metadata, e.g. meta_Industrial_and_Scientific.json (.json.gz too)")
    parser.add_argument("--category", help="what the items are, for prompts (default: from the reviews "
                        'file name, e.g. "industrial and scientific product")')
    add_sequence_arguments(parser)


def from_args(args: argparse.Namespace) -> Dataset:
    return load_amazon(args.reviews, args.meta, category=args.category, skip_bad=args.skip_bad,
                       **sequence_options(args))
