"""Shared by the sampler tests: a small vocabulary, random catalogs and left-padded prompts,
and the reference constraint (a dict of prefixes, independent of rere's trie)."""
from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor

VOCAB, EOS, PAD = 120, 119, 0


class PrefixDictProcessor(LogitsProcessor):
    """The reference way: a dict from each completion prefix to its allowed next tokens,
    looked up one beam at a time (independent of rere's trie)."""

    def __init__(self, seqs, prompt_len):
        self.allowed, self.prompt_len = {}, prompt_len
        for seq in seqs:
            for d in range(len(seq)):
                self.allowed.setdefault(tuple(seq[:d]), set()).add(seq[d])

    def __call__(self, input_ids, scores):
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            mask[row, sorted(self.allowed.get(tuple(ids), ()))] = 0.0
        return scores + mask


def catalog(n_items, seed, max_len=6, alphabet=30):
    rng = np.random.default_rng(seed)
    seqs = {tuple(rng.integers(1, alphabet, size=rng.integers(1, max_len)).tolist()) + (EOS,) for _ in range(n_items)}
    return [list(s) for s in sorted(seqs)]


def prompts(n, seed, lengths=(3, 9)):
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, VOCAB - 1, size=rng.integers(*lengths)).tolist() for _ in range(n)]
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def completion(tokens, eos=EOS):
    """Tokens up to and including the first EOS."""
    tokens = list(tokens)
    return tuple(tokens[:tokens.index(eos) + 1]) if eos in tokens else tuple(tokens)
