"""What `beam_search` and `sample` share about their completions: the EOS that ends them and
the catalog items each one names."""
from __future__ import annotations

import torch

from rere.index import CatalogIndex


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
