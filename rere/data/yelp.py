"""The Yelp open dataset: reviews are the interactions, businesses the items.

Two files of one JSON object a line (plain or .gz): `yelp_academic_dataset_review.json`
(`user_id`, `business_id`, `date` "YYYY-MM-DD HH:MM:SS", ...) and
`yelp_academic_dataset_business.json` (`business_id`, `name`, `address`, `city`, `state`,
...). The review file is several GB, so it is streamed and only three fields a review are
kept. A business is titled "Name (Address, City, ST)", empty parts left out and whitespace
collapsed (older dumps have addresses over several lines); dates are read as UTC. The data
spans many years: a time window (`start`, `end`) keeps it to a workable size.
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from rere.data.dataset import BadRows, Dataset
from rere.data.sequences import (Interactions, Sequencing, add_sequence_arguments, add_title, build_dataset, field,
                                 parse_object, read_lines, require_file, sequence_options)

NAME = "yelp"
HELP = "the Yelp open dataset (yelp_academic_dataset_review.json + yelp_academic_dataset_business.json)"


def load_yelp(reviews: str | Path, businesses: str | Path, *, category: str = "business", min_count: int = 5,
              max_history: int = 10, start: int | str | None = None, end: int | str | None = None,
              split: tuple[float, ...] = (0.8, 0.1, 0.1), skip_bad: bool = False) -> Dataset:
    """The dataset of Yelp reviews; the options after `category` are `Sequencing`'s."""
    reviews = require_file(reviews, "the Yelp review file, yelp_academic_dataset_review.json")
    businesses = require_file(businesses, "the Yelp business file, yelp_academic_dataset_business.json")
    sequencing = Sequencing(min_count, max_history, start, end, split)
    bad = BadRows(skip_bad)
    titles = read_businesses(businesses, bad)
    interactions = read_reviews(reviews, titles, businesses, bad)
    return build_dataset(interactions, titles, sequencing, source=f"{NAME}:{reviews.resolve()}", category=category,
                         options={"files": {"reviews": str(reviews), "businesses": str(businesses)}},
                         skipped=bad.counts)


def read_businesses(path: Path, bad: BadRows) -> dict[str, str]:
    """{business_id: title}."""
    titles: dict[str, str] = {}
    for where, line in read_lines(path, "reading businesses"):
        try:
            row = parse_object(line)
            item = str(field(row, "business_id"))
        except ValueError as err:
            bad(where, str(err))
            continue
        add_title(titles, item, business_title(row), where, bad)
    return titles


def read_reviews(path: Path, titles: dict[str, str], businesses: Path, bad: BadRows) -> Interactions:
    """(user, business, date) of every review, in file order."""
    interactions = Interactions()
    for where, line in read_lines(path, "reading reviews"):
        try:
            row = parse_object(line)
            user, item = str(field(row, "user_id")), str(field(row, "business_id"))
            timestamp = parse_date(field(row, "date"))
            if item not in titles:
                raise ValueError(f"unknown item: business {item!r} is not in {businesses.name}")
        except ValueError as err:
            bad(where, str(err))
            continue
        interactions.add(user, item, timestamp)
    return interactions


def business_title(row: dict) -> str:
    """"Name (Address, City, ST)"; "" when the business has no name."""
    name = _words(row.get("name"))
    place = ", ".join(part for part in map(_words, (row.get("address"), row.get("city"), row.get("state"))) if part)
    return f"{name} ({place})" if name and place else name


def parse_date(value: object) -> int:
    """Unix seconds of a "YYYY-MM-DD HH:MM:SS" date, taken as UTC."""
    try:
        return int(datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        raise ValueError(f"bad timestamp: {value!r} is not a date like 2018-07-07 22:09:11") from None


def _words(value: object) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reviews", help="yelp_academic_dataset_review.json (.json.gz too)")
    parser.add_argument("businesses", help="yelp_academic_dataset_business.json (.json.gz too)")
    parser.add_argument("--category", default="business", help="what the items are, for prompts (default %(default)s)")
    add_sequence_arguments(parser)


def from_args(args: argparse.Namespace) -> Dataset:
    return load_yelp(args.reviews, args.businesses, category=args.category, skip_bad=args.skip_bad,
                     **sequence_options(args))
