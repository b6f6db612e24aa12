"""The C++ catalog index and its torch twin against a plain-Python trie."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rere.index import CatalogIndex, INVALID_STATE, ROOT_STATE
from rere.index import tensors as ops
from trie_reference import ReferenceTrie


class TorchBackend:
    """The torch ops over the exported tensors (the device path, without the C++ shortcut the
    CPU tensors carry), with CatalogIndex's query signatures."""

    def __init__(self, index: CatalogIndex):
        self.t = dataclasses.replace(index.tensors, native=None)

    def allowed(self, states, with_next_states=False):
        offsets, tokens, nxt = ops.allowed(self.t, torch.as_tensor(states), with_next_states)
        return (offsets, tokens, nxt) if with_next_states else (offsets, tokens)

    def advance(self, states, tokens):
        return ops.advance(self.t, torch.as_tensor(states), torch.as_tensor(tokens))

    def items_at(self, states):
        return ops.items_at(self.t, torch.as_tensor(states))


BACKENDS = {"cpp": lambda index: index, "torch": TorchBackend}


def rows(offsets, values) -> list[list[int]]:
    offsets = offsets.tolist()
    values = values.tolist()
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def states_of(q, prefixes: list[tuple]) -> dict[tuple, int]:
    """Walk every prefix from the root in batches, one depth at a time."""
    states = {(): ROOT_STATE}
    for depth in range(1, max(map(len, prefixes)) + 1):
        level = [p for p in prefixes if len(p) == depth]
        if not level:
            continue
        parents = torch.tensor([states[p[:-1]] for p in level], dtype=torch.int64)
        nxt = q.advance(parents, torch.tensor([p[-1] for p in level], dtype=torch.int64)).tolist()
        states.update(zip(level, nxt))
    return states


def check_against_reference(q, ref: ReferenceTrie, vocab_size: int) -> None:
    prefixes = ref.prefixes()
    states = states_of(q, prefixes)
    assert all(states[p] != INVALID_STATE for p in prefixes)
    assert len(set(states.values())) == len(prefixes), "two positions share a state"

    batch = torch.tensor([states[p] for p in prefixes] + [INVALID_STATE], dtype=torch.int64)
    offsets, tokens, nxt = q.allowed(batch, with_next_states=True)
    assert rows(offsets, tokens) == [ref.allowed(p) for p in prefixes] + [[]]
    for p, toks, next_states in zip(prefixes, rows(offsets, tokens), rows(offsets, nxt)):
        assert next_states == [states[p + (t,)] for t in toks]

    offsets, items = q.items_at(batch)
    assert [sorted(r) for r in rows(offsets, items)] == [ref.items_at(p) for p in prefixes] + [[]]

    # Tokens that leave the trie, from every position: the smallest token not allowed, and
    # tokens outside the vocabulary.
    for bad in ("gap", -1, vocab_size):
        toks = []
        for p in prefixes:
            if bad == "gap":
                allowed = set(ref.allowed(p))
                toks.append(next(t for t in range(vocab_size + 1) if t not in allowed))
            else:
                toks.append(bad)
        out = q.advance(batch[:-1], torch.tensor(toks, dtype=torch.int64))
        assert (out == INVALID_STATE).all()
    assert q.advance(torch.tensor([INVALID_STATE]), torch.tensor([0])).tolist() == [INVALID_STATE]


catalogs = st.integers(min_value=1, max_value=6).flatmap(
    lambda alphabet: st.lists(
        st.lists(st.integers(min_value=0, max_value=alphabet - 1), min_size=1, max_size=8), min_size=1, max_size=40
    )
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=catalogs, data=st.data())
def test_random_catalogs_match_reference(backend, seqs, data):
    """Small alphabets force shared prefixes, duplicates and items that are prefixes of others."""
    extra = data.draw(st.lists(st.sampled_from(seqs), max_size=5))  # duplicates
    seqs = seqs + extra
    ids = data.draw(st.lists(st.integers(0, 2**40), min_size=len(seqs), max_size=len(seqs)))
    index = CatalogIndex.from_sequences(seqs, ids, vocab_size=8)
    check_against_reference(BACKENDS[backend](index), ReferenceTrie(seqs, ids), vocab_size=8)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(seqs=st.lists(st.lists(st.integers(0, 2**31 - 2), min_size=1, max_size=5), min_size=1, max_size=12))
def test_large_token_ids(backend, seqs):
    index = CatalogIndex.from_sequences(seqs, vocab_size=2**31 - 1)
    check_against_reference(BACKENDS[backend](index), ReferenceTrie(seqs), vocab_size=2**31 - 1)


def test_from_sequences_takes_lists_tuples_arrays_and_tensors_alike():
    """Lists and tuples of ints are flattened in C++; anything else by numpy: the same index."""
    seqs = [[3, 1, 4], [1, 5], [9, 2, 6, 5]]
    flat = CatalogIndex.from_flat(np.array([3, 1, 4, 1, 5, 9, 2, 6, 5]), np.array([0, 3, 5, 9]), vocab_size=10)
    for given in (seqs, [tuple(s) for s in seqs], [np.array(s) for s in seqs], [torch.tensor(s) for s in seqs],
                  (s for s in seqs), [seqs[0], np.array(seqs[1]), tuple(seqs[2])]):
        index = CatalogIndex.from_sequences(given, vocab_size=10)
        for a, b in zip(index._trie.arrays().values(), flat._trie.arrays().values()):
            assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="item 1: token 1.5 at position 1 is not an int64 integer"):
        CatalogIndex.from_sequences([[1, 2], [3, 1.5]], vocab_size=10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "seqs",
    [
        [[7]],  # a single one-token item
        [[3, 1, 4, 1, 5, 9, 2, 6]],  # a single long item: one edge
        [[1], [1], [1]],  # three items with one identifier
        [[1, 2], [1, 2, 3], [1, 2, 3, 4]],  # each a prefix of the next
        [[5, 0], [4, 0], [3, 0], [2, 0], [1, 0]],  # only first-token branching
    ],
)
def test_edge_cases(backend, seqs):
    index = CatalogIndex.from_sequences(seqs, vocab_size=10)
    check_against_reference(BACKENDS[backend](index), ReferenceTrie(seqs), vocab_size=10)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=catalogs)
def test_forced_continuations_match_reference(seqs):
    """Inside the edge into a leaf the rest of the sequence is forced (the beam-search replay
    scores it in one forward); anywhere the trie may still branch, nothing is."""
    index = CatalogIndex.from_sequences(seqs, vocab_size=8)
    ref = ReferenceTrie(seqs)
    prefixes = ref.prefixes()
    states = states_of(index, prefixes)
    batch = torch.tensor([states[p] for p in prefixes] + [INVALID_STATE], dtype=torch.int64)
    want = [ref.forced(p) for p in prefixes] + [[]]
    width = max(map(len, want)) + 1
    assert ops.forced_lengths(index.tensors, batch).tolist() == [len(w) for w in want]
    assert ops.forced_tokens(index.tensors, batch, width).tolist() == [w + [-1] * (width - len(w)) for w in want]


def test_states_walk_compressed_edges():
    """One long item: 8 tokens are one edge; the states inside it are consecutive."""
    index = CatalogIndex.from_sequences([[3, 1, 4, 1, 5, 9, 2, 6], [3, 2]], vocab_size=10)
    stats = index.stats()
    assert stats["nodes"] == 4  # root, [3], [3 1 4 1 5 9 2 6], [3 2]
    assert stats["max_fanout_per_depth"][:3] == [1, 2, 1]
    state = index.advance([ROOT_STATE], [3])
    state = index.advance(state, [1])
    for token in (4, 1, 5, 9, 2):
        offsets, tokens = index.allowed(state)
        assert tokens.tolist() == [token]
        state = index.advance(state, [token])


def test_torch_ops_agree_with_cpp_on_synthetic_catalog():
    from rere.synthetic import title_like_catalog

    tokens, offsets = title_like_catalog(5_000, seed=3)
    index = CatalogIndex.from_flat(tokens, offsets, vocab_size=151_936)
    rng = np.random.default_rng(0)
    states = index.root_states(256)
    torch_q = TorchBackend(index)
    for _ in range(22):
        cpp_out = index.allowed(states, with_next_states=True)
        torch_out = torch_q.allowed(states, with_next_states=True)
        for a, b in zip(cpp_out, torch_out):
            assert torch.equal(a.long(), b.long())
        # Each beam takes a random allowed token (or a wrong one, now and then).
        choice = [rng.choice(r) if r and rng.random() > 0.05 else 151_000 for r in rows(cpp_out[0], cpp_out[1])]
        choice = torch.tensor(choice, dtype=torch.int64)
        nxt = index.advance(states, choice)
        assert torch.equal(nxt, torch_q.advance(states, choice))
        assert all(torch.equal(a, b) for a, b in zip(index.items_at(nxt), torch_q.items_at(nxt)))
        states = nxt
    # Every beam ended (EOS) or left the trie.
    assert (index.allowed(states)[0][-1] == 0).item()


def test_every_item_is_found_at_the_end_of_its_sequence():
    from rere.synthetic import title_like_catalog

    tokens, offsets = title_like_catalog(2_000, seed=1)
    ids = np.arange(2_000) * 7 + 11
    index = CatalogIndex.from_flat(tokens, offsets, ids, vocab_size=151_936)
    lengths = np.diff(offsets)
    states = index.root_states(2_000)
    for depth in range(int(lengths.max())):
        step = np.where(depth < lengths, tokens[np.minimum(offsets[:-1] + depth, tokens.size - 1)], 0)
        moved = index.advance(states, step)
        states = torch.where(torch.from_numpy(depth < lengths), moved, states)
    assert (states != INVALID_STATE).all()
    item_offsets, items = index.items_at(states)
    for i, found in enumerate(rows(item_offsets, items)):
        assert ids[i] in found


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seqs=[]), "empty catalog"),
        (dict(seqs=[[1, 2], []]), "item 1 (id 1) has an empty token sequence"),
        (dict(seqs=[[1, 2], [3, 10]]), "item 1 (id 1): token 10 at position 1 is outside [0, vocab_size=10)"),
        (dict(seqs=[[1, 2], [3, -4]]), "item 1 (id 1): token -4 at position 1"),
        (dict(seqs=[[1], [2, 2**40]]), "item 1 (id 1): token 1099511627776 at position 1"),
        (dict(seqs=[[1], [2]], item_ids=[5, -3]), "item 1 has a negative id (-3)"),
        (dict(seqs=[[1], [2]], item_ids=[5]), "item_ids has 1 entries but offsets describe 2 sequences"),
    ],
)
def test_build_errors_name_the_item(kwargs, message):
    with pytest.raises(ValueError) as err:
        CatalogIndex.from_sequences(vocab_size=10, **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "offsets, message",
    [
        ([1, 2, 4], "offsets[0] must be 0"),
        ([0, 3, 2, 4], "offsets are not increasing within [0, 4] at item 1 (id 1)"),
        ([0, 2, 5], "offsets are not increasing within [0, 4] at item 1 (id 1)"),
        ([0, 2, 3], "offsets end at 3 but there are 4 tokens"),
    ],
)
def test_mismatched_offsets(offsets, message):
    with pytest.raises(ValueError) as err:
        CatalogIndex.from_flat(np.array([1, 2, 3, 4]), np.array(offsets), vocab_size=10)
    assert message in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_foreign_states_are_rejected(backend):
    q = BACKENDS[backend](CatalogIndex.from_sequences([[1, 2], [1, 3]], vocab_size=10))
    for state in (-2, 99 << 32, (1 << 32) | 7, 1 << 32 - 1):
        with pytest.raises(ValueError, match=r"states\[1\] = .* is not a state of this index"):
            q.allowed(torch.tensor([ROOT_STATE, state]))
    with pytest.raises(ValueError, match=r"states\[0\]"):
        q.items_at(torch.tensor([99 << 32]))
