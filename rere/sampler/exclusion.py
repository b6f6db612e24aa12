"""Items a search must not return, per prompt (the user's history, items out of stock).

Exclusion happens inside the trie walk: a candidate token is cut when every item below
the trie position it leads to is excluded for its prompt, so beams never spend themselves
on excluded items. The index numbers items so that every subtree holds a contiguous range
of item slots (csrc/trie.h); counting a prompt's excluded slots in that range is one
`searchsorted` over all candidates of all prompts at once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rere.index import CatalogIndex, TrieTensors
from rere.kernels import AllowedScores


@dataclass(frozen=True)
class ExcludedItems:
    keys: torch.Tensor  # sorted int64: prompt * num_slots + excluded slot
    num_slots: int
    trie: TrieTensors  # on the search's device: item_lo/item_hi give each node's slot range
    item_ids: list[set[int]]  # per prompt, the excluded item ids (to filter duplicates' lists)

    @classmethod
    def build(cls, index: CatalogIndex, exclude_items, n_prompts: int) -> "ExcludedItems":
        """From one collection of item ids per prompt (or an existing ExcludedItems)."""
        if isinstance(exclude_items, ExcludedItems):
            return exclude_items
        exclude_items = list(exclude_items)
        if len(exclude_items) != n_prompts:
            raise ValueError(f"exclude_items has {len(exclude_items)} entries for {n_prompts} prompts")
        slot_ids = index.to("cpu").tensors.item_ids  # item id of each slot
        order = torch.argsort(slot_ids, stable=True)
        sorted_ids = slot_ids[order]
        keys, per_prompt = [], []
        for prompt, items in enumerate(exclude_items):
            ids = torch.as_tensor(sorted({int(i) for i in items}), dtype=torch.int64)
            per_prompt.append(set(ids.tolist()))
            lo = torch.searchsorted(sorted_ids, ids, side="left")
            hi = torch.searchsorted(sorted_ids, ids, side="right")
            missing = (hi == lo).nonzero()
            if missing.numel():
                raise ValueError(f"exclude_items[{prompt}] names item {int(ids[missing[0, 0]])}, "
                                 "which is not in the index")
            slots = order[torch.repeat_interleave(lo, hi - lo) + _ranks(hi - lo)]
            keys.append(prompt * slot_ids.numel() + slots)
        keys = torch.sort(torch.cat(keys)).values if keys else torch.zeros(0, dtype=torch.int64)
        return cls(keys.to(index.device), slot_ids.numel(), index.tensors, per_prompt)

    def mask(self, children: AllowedScores, beams: int, prompt_ids: torch.Tensor | None = None) -> AllowedScores:
        """`children` with -inf for every candidate whose subtree holds only excluded items
        of its prompt (rows are beams; row // beams is the prompt, or indexes `prompt_ids`
        when the rows cover only some prompts)."""
        node = children.next_states >> 32
        lo, hi = self.trie.item_lo[node].long(), self.trie.item_hi[node].long()
        keys = self.keys
        prompt = children.rows // beams
        if prompt_ids is not None:
            prompt = prompt_ids[prompt]
        base = prompt * self.num_slots
        excluded = torch.searchsorted(keys, base + hi) - torch.searchsorted(keys, base + lo)
        cut = excluded == hi - lo
        return replace(children, scores=torch.where(cut, float("-inf"), children.scores))

    def drop_from(self, offsets: torch.Tensor, values: torch.Tensor, beams: int):
        """Remove each prompt's excluded ids from per-slot item lists (CSR over P*G slots)."""
        rows = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets.diff().cpu())
        keep = torch.tensor([int(v) not in self.item_ids[int(r) // beams] for r, v in zip(rows, values.cpu())],
                            dtype=torch.bool)
        counts = torch.zeros(offsets.numel() - 1, dtype=torch.int64).index_add_(0, rows, keep.long())
        new_offsets = torch.zeros_like(offsets.cpu())
        torch.cumsum(counts, 0, out=new_offsets[1:])
        return new_offsets.to(offsets.device), values[keep.to(values.device)]


def _ranks(counts: torch.Tensor) -> torch.Tensor:
    """0..count-1 for every group, concatenated."""
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(int(counts.sum())) - torch.repeat_interleave(starts, counts)
