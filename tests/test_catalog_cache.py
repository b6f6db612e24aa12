"""A catalog tokenised and indexed once, then memory-mapped (rere/index/catalog_cache.py)."""
from __future__ import annotations

import numpy as np
import pytest

from rere.catalog import Catalog
from rere.index import CatalogIndex
from rere.index import catalog_cache
from rere.index.catalog_cache import cached_catalog


def catalog(n=30, extra=""):
    return Catalog.from_lists([f"i{i}" for i in range(n)], [f"Red pen No. {i}{extra}" for i in range(n)])


def test_the_first_call_builds_later_ones_map_the_same_files(tmp_path, qwen2, monkeypatch):
    items = catalog()
    first = cached_catalog(items, qwen2, template='"{title}"\n', context="### Response:\n", vocab_size=151_936,
                           cache_dir=tmp_path)
    built = items.tokenize(qwen2, template='"{title}"\n', context="### Response:\n")
    assert np.array_equal(first.completions.tokens, built.tokens)
    assert np.array_equal(first.completions.offsets, built.offsets)
    assert first.completions.eos_token_id == built.eos_token_id
    reference = CatalogIndex.from_flat(built.tokens, built.offsets, vocab_size=151_936)
    for a, b in zip(first.index._trie.arrays().values(), reference._trie.arrays().values()):
        assert np.array_equal(a, b)
    assert len(list(tmp_path.iterdir())) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(Catalog, "tokenize", no_tokenizing)
    again = cached_catalog(items, qwen2, template='"{title}"\n', context="### Response:\n", vocab_size=151_936,
                           cache_dir=tmp_path)
    assert isinstance(again.completions.tokens, np.memmap)
    assert np.array_equal(again.completions.tokens, built.tokens)
    # Another catalog, template or context is another folder.
    with pytest.raises(AssertionError, match="tokenised again"):
        cached_catalog(catalog(extra="x"), qwen2, template='"{title}"\n', context="### Response:\n",
                       vocab_size=151_936, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="tokenised again"):
        cached_catalog(items, qwen2, template="{title}\n", context="### Response:\n", vocab_size=151_936,
                       cache_dir=tmp_path)


def test_the_digest_follows_everything_that_makes_the_tokens(qwen2):
    items = catalog()
    base = catalog_cache.catalog_digest(items, qwen2, '"{title}"\n', "### Response:\n", 151_936)
    assert base == catalog_cache.catalog_digest(catalog(), qwen2, '"{title}"\n', "### Response:\n", 151_936)
    assert base != catalog_cache.catalog_digest(items, qwen2, '"{title}"\n', "### Response:\n", 151_937)
    assert base != catalog_cache.catalog_digest(items, qwen2, '"{title}"\n', "Answer:\n", 151_936)
    renamed = Catalog.from_lists([f"j{i}" for i in range(30)], list(items.identifiers))
    assert base != catalog_cache.catalog_digest(renamed, qwen2, '"{title}"\n', "### Response:\n", 151_936)


def test_a_folder_another_process_published_first_is_kept(tmp_path, qwen2):
    items = catalog()
    settings = dict(template='"{title}"\n', context="### Response:\n", vocab_size=151_936)
    folder = tmp_path / catalog_cache.catalog_digest(items, qwen2, settings["template"], settings["context"],
                                                     settings["vocab_size"])
    catalog_cache._build(folder, items, qwen2, **settings)
    first = (folder / "index.rtrie").stat().st_ino
    catalog_cache._build(folder, items, qwen2, **settings)  # a second process, built at the same time
    assert (folder / "index.rtrie").stat().st_ino == first  # not replaced under a reader
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # its own copy removed
