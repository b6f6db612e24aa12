"""What `beam_search` and `sample` share: the setup of a constrained decode from their common
arguments (`Decoding`), the EOS that ends completions and the catalog items each one names."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rere.index import CatalogIndex
from rere.index.tensors import TrieTensors
from rere.sampler.exclusion import ExcludedItems


@dataclass(frozen=True)
class Decoding:
    """The arguments every constrained decode takes, checked and resolved once: `prepare`."""

    n_prompts: int
    device: torch.device
    attention_mask: torch.Tensor  # [P, L] on the prompts' device
    eos: int
    pad: int
    index: CatalogIndex  # on the prompts' device
    trie: TrieTensors
    max_new: int  # decode steps at most
    excluded: ExcludedItems | None

    @classmethod
    def prepare(cls, model, index: CatalogIndex, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                max_new_tokens: int | None, exclude_items, eos_token_id: int | None,
                pad_token_id: int | None) -> "Decoding":
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [prompts, length], got shape {tuple(input_ids.shape)}")
        n_prompts, device = input_ids.shape[0], input_ids.device
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        eos = resolve_eos_token_id(eos_token_id, index, model)
        index = index.to(device)
        excluded = ExcludedItems.build(index, exclude_items, n_prompts) if exclude_items is not None else None
        return cls(n_prompts, device, mask, eos, eos if pad_token_id is None else pad_token_id, index, index.tensors,
                   max_new_tokens or index.max_depth, excluded)


def resolve_eos_token_id(eos_token_id, index: CatalogIndex, model) -> int:
    """The given id, else the index's (from_catalog records it), else the token that ends
    every catalog sequence, else the model's."""
    for candidate in (eos_token_id, index.metadata.get("eos_token_id"), index.final_token,
                      getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    raise ValueError("no eos_token_id: pass one (the token that ends every catalog sequence)")


def named_items(index: CatalogIndex, end_states: torch.Tensor, excluded, group: int):
    """For completions ending at `end_states` (P * group of them): the first item each names
    (-1 for none) and, as CSR (offsets, values), every item it names, excluded ones dropped."""
    offsets, values = index.items_at(end_states)
    if excluded is not None:
        offsets, values = excluded.drop_from(offsets, values, group)
    first = torch.full((end_states.numel(),), -1, dtype=torch.int64, device=end_states.device)
    named = offsets.diff() > 0
    first[named.to(first.device)] = values[offsets[:-1][named]].to(first.device)
    return first, offsets, values


class ItemLists:
    """`items(p, g)` for an output with `lengths [P, G]` and the CSR `item_offsets/values`."""

    lengths: torch.Tensor
    item_offsets: torch.Tensor
    item_values: torch.Tensor

    def items(self, prompt: int, g: int) -> list[int]:
        """Every item named by completion g of prompt p: one, or several for an identifier
        that several catalog items share; [] where there is none."""
        slot = prompt * self.lengths.shape[1] + g
        return self.item_values[self.item_offsets[slot]:self.item_offsets[slot + 1]].tolist()
