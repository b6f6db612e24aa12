"""A plain-Python trie: the reference the C++ index and its torch ops are checked against.

A position is the tuple of tokens taken so far (None once a token leaves the catalog).
"""
from __future__ import annotations

from collections import defaultdict


class ReferenceTrie:
    def __init__(self, seqs, item_ids=None):
        item_ids = range(len(seqs)) if item_ids is None else item_ids
        self.children: dict[tuple, set[int]] = defaultdict(set)
        self.items: dict[tuple, list[int]] = defaultdict(list)
        for seq, item in zip(seqs, item_ids):
            seq = tuple(int(t) for t in seq)
            for depth in range(len(seq)):
                self.children[seq[:depth]].add(seq[depth])
            self.items[seq].append(int(item))

    def prefixes(self) -> list[tuple]:
        """Every position reachable from the root (the root included)."""
        found = {()}
        for prefix, nxt in self.children.items():
            found.add(prefix)
            found.update(prefix + (t,) for t in nxt)
        return sorted(found, key=lambda p: (len(p), p))

    def allowed(self, prefix) -> list[int]:
        return [] if prefix is None else sorted(self.children.get(prefix, ()))

    def advance(self, prefix, token):
        return None if prefix is None or token not in self.children.get(prefix, ()) else prefix + (token,)

    def items_at(self, prefix) -> list[int]:
        return [] if prefix is None else sorted(self.items.get(prefix, ()))

    def forced(self, prefix) -> list[int]:
        """The rest of the one sequence continuing `prefix` when `prefix` lies inside the
        compressed edge into a leaf (no branch, no item ending, on the way); [] otherwise.
        Nodes of the compressed trie: the root, where an item ends, and where the number of
        children is not one."""
        def is_node(p):
            return p == () or p in self.items or len(self.children.get(p, ())) != 1
        if prefix is None or is_node(prefix):
            return []
        rest = []
        while not is_node(prefix):
            (token,) = self.children[prefix]
            rest.append(token)
            prefix = prefix + (token,)
        return rest if not self.children.get(prefix) else []
