"""`rere prepare SOURCE ... --out DIR`: any supported source format -> one prepared dataset
folder (the layout in rere/data/dataset.py), which training and evaluation read."""
from __future__ import annotations

import argparse

from rere.data import amazon_raw, movielens, rere_csv, semantic_ids, yelp

SOURCES = (rere_csv, semantic_ids, amazon_raw, yelp, movielens)  # each: NAME, HELP, add_arguments(parser), from_args(args) -> Dataset


def register(commands) -> None:
    prepare = commands.add_parser("prepare", help="turn a dataset into rere's prepared folder",
                                  description=__doc__)
    sources = prepare.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for source in SOURCES:
        parser = sources.add_parser(source.NAME, help=source.HELP, description=source.HELP)
        source.add_arguments(parser)
        parser.add_argument("-o", "--out", required=True, help="folder to write (must not exist unless --overwrite)")
        parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        parser.add_argument("--skip-bad", action="store_true",
                            help="skip malformed rows and count them, instead of stopping at the first")
        parser.set_defaults(func=_prepare(source))


def _prepare(source):
    def run(args: argparse.Namespace) -> None:
        dataset = source.from_args(args)
        folder = dataset.save(args.out, overwrite=args.overwrite)
        print(f"{dataset}\nwrote {folder}")
        for reason, count in sorted(dataset.skipped.items()):
            print(f"  skipped {count:,} rows: {reason}")
    return run
