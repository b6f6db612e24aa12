"""`CatalogIndex`: the Python face of the C++ compressed trie (csrc/).

The index answers, for a whole batch of beams at once, which tokens continue some catalog
item (`allowed`), where each beam goes on a token (`advance`) and which items end at a
beam's position (`items_at`). On the CPU the C++ code answers; after `.to("cuda")` the
same queries run as torch ops on the device (rere/index/tensors.py), so a decode loop
never returns to the host for them.
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rere import _trie
from rere.index import tensors as ops
from rere.index.index_file import load_trie, trie_stats
from rere.index.tensors import TrieTensors

if TYPE_CHECKING:
    from rere.catalog import Catalog


def _as_int64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.int64).contiguous().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.int64).reshape(-1))


def _to_torch(array: np.ndarray, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():  # the index's arrays are read-only views; torch warns
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array)
    return tensor if device.type == "cpu" else tensor.to(device)


class CatalogIndex:
    """A catalog's token sequences as a compressed trie, queried a batch of beams at a time.

    States are int64 (see csrc/trie.h): `CatalogIndex.ROOT` (0) before any token, and
    `CatalogIndex.INVALID` (-1) once a token leaves the trie; an invalid state allows
    nothing and stays invalid, so it never means "unconstrained".
    """

    ROOT = ops.ROOT_STATE
    INVALID = ops.INVALID_STATE

    def __init__(self, trie: "_trie.Trie", device: torch.device | str = "cpu", metadata: dict | None = None):
        self._trie = trie
        self.device = torch.device(device)
        self.metadata = metadata if metadata is not None else json.loads(trie.metadata or "{}")
        """Free-form facts saved with the index (tokenizer, template, ...)."""
        self._tensors: TrieTensors | None = None
        self._on_devices: dict[torch.device, CatalogIndex] = {self.device: self}

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_sequences(
        cls,
        seqs: Iterable[Sequence[int]],
        item_ids: Sequence[int] | None = None,
        *,
        vocab_size: int,
        metadata: dict | None = None,
    ) -> "CatalogIndex":
        """Index token sequences, one per item (include the EOS token where the model ends an
        item with it). `item_ids` default to the positions 0..n-1; duplicates are allowed."""
        seqs = seqs if isinstance(seqs, list) else list(seqs)
        try:  # lists or tuples of ints: flattened in C++, one pass over the tokens
            flat, offsets = _trie.flatten_sequences(seqs)
        except TypeError:  # arrays, tensors: each flattened by numpy
            arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
            offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays)), out=offsets[1:])
            flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return cls.from_flat(flat, offsets, item_ids, vocab_size=vocab_size, metadata=metadata)

    @classmethod
    def from_flat(
        cls,
        tokens: np.ndarray,
        offsets: np.ndarray,
        item_ids: Sequence[int] | None = None,
        *,
        vocab_size: int,
        metadata: dict | None = None,
    ) -> "CatalogIndex":
        """Index sequences given as one flat token array and n+1 offsets (item i is
        tokens[offsets[i]:offsets[i+1]]): the fast path for large catalogs."""
        offsets = _as_int64(offsets)
        ids = np.arange(max(len(offsets) - 1, 0), dtype=np.int64) if item_ids is None else _as_int64(item_ids)
        trie = _trie.Trie.build(_as_int64(tokens), offsets, ids, int(vocab_size))
        return cls(trie, metadata=dict(metadata or {}))

    @classmethod
    def from_catalog(
        cls,
        catalog: "Catalog",
        tokenizer,
        template: str | None = None,
        context: str = "### Response:\n",
        *,
        vocab_size: int | None = None,
        add_missing_tokens: bool = False,
    ) -> "CatalogIndex":
        """Index a catalog's completions as the model generates them after `context` (see
        `Catalog.tokenize`). Item ids are catalog positions (`catalog.ids[i]` is item i)."""
        tokenized = catalog.tokenize(tokenizer, template=template, context=context,
                                     add_missing_tokens=add_missing_tokens)
        metadata = {
            "catalog_items": len(catalog),
            "catalog_kind": catalog.kind,
            "template": template,
            "context": context,
            "tokenizer": getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__,
            "eos_token_id": tokenized.eos_token_id,
        }
        return cls.from_flat(tokenized.tokens, tokenized.offsets, vocab_size=vocab_size or tokenized.vocab_size,
                             metadata=metadata)

    # ---------------------------------------------------------------------------- file I/O
    def save(self, path: str | os.PathLike) -> None:
        """Write the index as one file (atomically: a crash leaves any older file intact)."""
        self._trie.save(os.fspath(path), json.dumps(self.metadata))

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "CatalogIndex":
        """Memory-map an index written by `save` (validated, nothing copied)."""
        trie, metadata = load_trie(path)
        return cls(trie, metadata=metadata).to(device)

    # ----------------------------------------------------------------------------- devices
    def to(self, device: torch.device | str) -> "CatalogIndex":
        """The same index with its queries answered on `device`; the arrays are copied there
        once and the copy is kept, so calling this every batch costs nothing."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._on_devices:
            index = CatalogIndex(self._trie, device, self.metadata)
            if device.type != "cpu":
                index._tensors = self.tensors.to(device)
            index._on_devices = self._on_devices  # every copy knows the others
            self._on_devices[device] = index
        return self._on_devices[device]

    @property
    def tensors(self) -> TrieTensors:
        """The flat arrays as tensors on this index's device (zero-copy on the CPU)."""
        if self._tensors is None:
            arrays = self._trie.arrays()
            counts = np.diff(arrays["child_offsets"])
            self._tensors = TrieTensors(
                **{name: _to_torch(a, self.device) for name, a in arrays.items()},
                max_children=int(counts.max()) if counts.size else 0,
                native=self._trie if self.device.type == "cpu" else None,
            )
        return self._tensors

    # ----------------------------------------------------------------------------- queries
    def _on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def root_states(self, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.int64, device=self.device)

    def allowed(self, states, with_next_states: bool = False):
        """Allowed next tokens per state as CSR: `(offsets, tokens)` or, with
        `with_next_states`, `(offsets, tokens, next_states)` aligned with `tokens`."""
        if self._on_cpu():
            offsets, tokens, nxt = self._trie.allowed(_as_int64(states), with_next_states)
            out = (torch.from_numpy(offsets), torch.from_numpy(tokens))
            return out + (torch.from_numpy(nxt),) if with_next_states else out
        offsets, tokens, nxt = ops.allowed(self.tensors, torch.as_tensor(states, device=self.device), with_next_states)
        return (offsets, tokens, nxt) if with_next_states else (offsets, tokens)

    def advance(self, states, tokens) -> torch.Tensor:
        """Next state of each beam after its token; `INVALID` where the token leaves the trie."""
        if self._on_cpu():
            return torch.from_numpy(self._trie.advance(_as_int64(states), _as_int64(tokens)))
        return ops.advance(self.tensors, torch.as_tensor(states, device=self.device),
                           torch.as_tensor(tokens, device=self.device))

    def items_at(self, states) -> tuple[torch.Tensor, torch.Tensor]:
        """Items whose sequence ends exactly at each state, as CSR `(offsets, item_ids)`.
        A duplicated identifier ends several items at one state."""
        if self._on_cpu():
            offsets, items = self._trie.items_at(_as_int64(states))
            return torch.from_numpy(offsets), torch.from_numpy(items)
        return ops.items_at(self.tensors, torch.as_tensor(states, device=self.device))

    # ------------------------------------------------------------------------------- facts
    @property
    def num_items(self) -> int:
        return int(self._trie.num_items)

    @functools.cached_property
    def max_depth(self) -> int:
        """Tokens in the longest catalog sequence."""
        return int(self._trie.stats()["max_depth"])

    @property
    def vocab_size(self) -> int:
        return int(self._trie.vocab_size)

    @property
    def final_token(self) -> int | None:
        """The token that ends every catalog sequence (their EOS), or None if they do not all
        end with one token, or if some sequence is a prefix of another (ends inside the trie).
        Computed once, on the CPU copy (~0.1 s at 1M items), which every device copy shares."""
        return self.to("cpu")._final_token_here

    @functools.cached_property
    def _final_token_here(self) -> int | None:
        t = self.tensors
        children = t.child_offsets[1:] - t.child_offsets[:-1]
        leaves = (children == 0).nonzero().flatten()
        leaves = leaves[leaves > 0]  # the root of an empty trie is no sequence's end
        if leaves.numel() == 0:
            return None
        ending_at_leaves = (t.item_hi[leaves].long() - t.item_lo[leaves].long()).sum()
        if int(ending_at_leaves) != self.num_items:
            return None
        tail_end = t.tail_offsets[leaves + 1].long()
        has_tail = tail_end > t.tail_offsets[leaves].long()
        last_tail = t.tail_tokens[(tail_end - 1).clamp(min=0)].long() if t.tail_tokens.numel() else 0
        last = torch.where(has_tail, last_tail, t.node_tokens[leaves].long())
        return int(last[0]) if bool((last == last[0]).all()) else None

    def stats(self) -> dict:
        """Items, nodes, edges, tail tokens, bytes (and per item), max fan-out per depth."""
        return trie_stats(self._trie)

    def __repr__(self) -> str:
        return f"CatalogIndex(items={self.num_items:,}, nodes={self._trie.num_nodes:,}, device={self.device})"
