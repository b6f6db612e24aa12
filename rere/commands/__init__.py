"""The `rere` subcommands: each module registers its own parser with `register(commands)`."""
from __future__ import annotations

import argparse


def verb_parser(commands, name: str, verb: str, help: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `rere NAME VERB`, for a command with one verb (`rere sid build`), both
    levels showing `doc`."""
    parent = commands.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parent.add_subparsers(dest=f"{name}_command", required=True)
    return verbs.add_parser(verb, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
