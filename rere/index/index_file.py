"""An index file read without torch: the C++ trie, memory-mapped and validated, and the
metadata saved with it. `CatalogIndex.load` reads files this way, and `rere index info`
uses it alone, so that it answers without importing torch (~1 s of a CLI call)."""
from __future__ import annotations

import json
import os

from rere import _trie


def load_trie(path: str | os.PathLike) -> tuple["_trie.Trie", dict]:
    """(the trie, its metadata) of an index file written by `CatalogIndex.save`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no index file at {path}")
    trie = _trie.Trie.load(path)
    try:
        metadata = json.loads(trie.metadata or "{}")
    except ValueError as err:  # undecodable bytes or bad JSON
        raise ValueError(f"{path} is corrupt: its metadata is not valid JSON ({err})") from None
    return trie, metadata


def trie_stats(trie: "_trie.Trie") -> dict:
    """Items, nodes, edges, tail tokens, bytes (and per item), max fan-out per depth."""
    stats = trie.stats()
    stats["bytes_per_item"] = stats["bytes"] / max(stats["items"], 1)
    return stats
