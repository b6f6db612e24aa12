"""Saving and memory-mapping the index: round trip, atomic writes, corrupt files."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rere.index import CatalogIndex
from rere.synthetic import title_like_catalog
from test_index import check_against_reference
from trie_reference import ReferenceTrie

SEQS = [[5, 1, 2, 9], [5, 1, 3, 9], [5, 1, 3, 9], [6, 9], [5, 1, 9], [7, 7, 7, 7, 7, 9]]


@pytest.fixture
def saved(tmp_path):
    index = CatalogIndex.from_sequences(SEQS, [10, 11, 12, 13, 14, 15], vocab_size=10, metadata={"note": "é"})
    path = tmp_path / "catalog.rtrie"
    index.save(path)
    return index, path


def test_round_trip(saved):
    index, path = saved
    loaded = CatalogIndex.load(path)
    assert loaded.metadata == {"note": "é"}
    assert loaded.vocab_size == 10 and loaded.num_items == 6
    assert loaded.stats() == index.stats()
    for name, array in index.tensors.__dict__.items():
        if isinstance(array, torch.Tensor):
            assert torch.equal(array, getattr(loaded.tensors, name)), name
    check_against_reference(loaded, ReferenceTrie(SEQS, [10, 11, 12, 13, 14, 15]), vocab_size=10)


def test_round_trip_large(tmp_path):
    tokens, offsets = title_like_catalog(20_000, seed=5)
    index = CatalogIndex.from_flat(tokens, offsets, vocab_size=151_936)
    index.save(tmp_path / "big.rtrie")
    loaded = CatalogIndex.load(tmp_path / "big.rtrie")
    states = torch.tensor([0, 1 << 32 | 1, 2 << 32 | 1, 1000 << 32 | 1])
    for a, b in zip(index.allowed(states, True), loaded.allowed(states, True)):
        assert torch.equal(a, b)


def test_loaded_arrays_are_views_of_the_mapping(saved):
    """Nothing is copied on load: the tensors share memory with the numpy views of the map."""
    _, path = saved
    loaded = CatalogIndex.load(path)
    arrays = loaded._trie.arrays()
    assert loaded.tensors.tail_tokens.data_ptr() == arrays["tail_tokens"].ctypes.data
    assert not arrays["tail_tokens"].flags.writeable


def test_save_replaces_atomically(saved, tmp_path):
    index, path = saved
    other = CatalogIndex.from_sequences([[1, 2]], vocab_size=10)
    other.save(path)
    assert CatalogIndex.load(path).num_items == 1
    assert sorted(os.listdir(tmp_path)) == ["catalog.rtrie"]  # no temporary file left behind


def test_failed_save_names_the_path_and_keeps_nothing(saved, tmp_path):
    index, _ = saved
    target = tmp_path / "missing-dir" / "x.rtrie"
    with pytest.raises(OSError, match="missing-dir/x.rtrie"):
        index.save(target)
    assert not (tmp_path / "missing-dir").exists()


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no index file at /nonexistent.rtrie"):
        CatalogIndex.load("/nonexistent.rtrie")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:10], "is not a rere index file"),
        (lambda b: b"NOTATRIE" + b[8:], "bad magic"),
        (lambda b: b[:8] + (99).to_bytes(4, "little") + b[12:], "format version 99"),
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
    ],
)
def test_damaged_files_raise(saved, tmp_path, damage, message):
    _, path = saved
    bad = tmp_path / "bad.rtrie"
    bad.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        CatalogIndex.load(bad)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_corruption_never_crashes(tmp_path_factory, data):
    """Any byte damage is either caught on load or leaves a trie that queries stay inside."""
    path = tmp_path_factory.mktemp("c") / "x.rtrie"
    CatalogIndex.from_sequences(SEQS, vocab_size=10).save(path)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    path.write_bytes(bytes(raw))
    try:
        index = CatalogIndex.load(path)
    except ValueError:
        return
    states = torch.tensor([0] + [(n << 32) | 1 for n in range(1, index._trie.num_nodes)])
    index.allowed(states, True)
    index.items_at(states)
    index.advance(states, torch.arange(states.numel()) % 10)
    index.stats()
