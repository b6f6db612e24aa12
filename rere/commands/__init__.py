"""The `rere` subcommands: each module registers its own parser with `register(commands)`."""
from __future__ import annotations

import argparse


def verb_parser(commands, name: str, verb: str, help: str, doc: str) -> argparse.ArgumentParser:
    """`rere NAME VERB`'s parser (NAME's own parser made on first use), both showing `doc`."""
    verbs = getattr(commands, "_rere_verbs", {})
    commands._rere_verbs = verbs
    if name not in verbs:
        parent = commands.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        verbs[name] = parent.add_subparsers(dest=f"{name}_command", required=True)
    return verbs[name].add_parser(verb, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
