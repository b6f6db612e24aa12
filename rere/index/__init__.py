"""The catalog index: a C++ compressed trie over the catalog's token sequences.

`CatalogIndex` builds, saves, loads and queries it; `TrieTensors` and the ops in
`rere.index.tensors` are the same queries as torch ops on any device. The names load on
first use (PEP 562), so that `rere.index.index_file` reads a file without importing torch.
"""
from __future__ import annotations

import importlib

_WHERE = {"CatalogIndex": "rere.index.catalog_index", "TrieTensors": "rere.index.tensors",
          "ROOT_STATE": "rere.index.tensors", "INVALID_STATE": "rere.index.tensors"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'rere.index' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
