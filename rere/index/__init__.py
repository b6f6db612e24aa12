"""The catalog index: a C++ compressed trie over the catalog's token sequences.

`CatalogIndex` builds, saves, loads and queries it; `TrieTensors` and the ops in
`rere.index.tensors` are the same queries as torch ops on any device.
"""
from rere.index.catalog_index import CatalogIndex
from rere.index.tensors import INVALID_STATE, ROOT_STATE, TrieTensors

__all__ = ["CatalogIndex", "TrieTensors", "ROOT_STATE", "INVALID_STATE"]
