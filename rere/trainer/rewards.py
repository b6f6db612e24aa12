"""ReRe's rewards: a rule reward for naming the target, a ranking penalty for hard negatives.

A reward function is any callable `reward(group: Groups) -> float tensor [P, G]` (one value
per prompt p and beam rank g); the trainer sums the configured ones. Add your own by
passing more callables to `GRPOTrainer(rewards=[...])`.

- rule: 1 when the completion names the target item, else 0. "Names" uses the catalog's
  identifiers, as the metrics do: with duplicate titles a completion names every item of
  that title, and it is a hit when the target is one of them.
- ranking: when the target is among the G beams, each other beam at rank i (0-based) gets
  -(1/log2(i+2)) / Z with Z = sum_{j<G} 1/log2(j+2): highly ranked wrong items are the hard
  negatives and are pushed down hardest. The target's beam gets 0, and a group without the
  target gets 0 everywhere (there is nothing to rank against).

Empty beam slots (a catalog with fewer than G allowed items) get 0 and no loss.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Groups:
    """What reward functions see: the rollout's items and each prompt's target."""

    item_ids: torch.Tensor  # int64 [P, G]: the (first) item each beam names, -1 for empty slots
    hits: torch.Tensor  # bool [P, G]: the beam names the target (any of its duplicate items)
    valid: torch.Tensor  # bool [P, G]: the slot holds a completion
    targets: torch.Tensor  # int64 [P]: target item (catalog position)
    examples: list | None = None  # the rere.data Examples behind the prompts, for custom rewards

    @classmethod
    def from_rollout(cls, rollout, targets: torch.Tensor, examples: list | None = None) -> "Groups":
        """From a `rere.sampler` output (BeamSearchOutput / SampleOutput with item CSR lists)."""
        P, G = rollout.item_ids.shape
        offsets, values = rollout.item_offsets.cpu(), rollout.item_values.cpu()
        slot = torch.repeat_interleave(torch.arange(P * G), offsets[1:] - offsets[:-1])
        target_of_value = targets.cpu().repeat_interleave(G)[slot]
        hits = torch.zeros(P * G, dtype=torch.bool)
        hits[slot[values == target_of_value]] = True
        return cls(rollout.item_ids.cpu(), hits.view(P, G), rollout.lengths.cpu() > 0, targets.cpu(), examples)


RewardFn = Callable[[Groups], torch.Tensor]


def rule_reward(groups: Groups) -> torch.Tensor:
    return (groups.hits & groups.valid).float()


def ranking_reward(groups: Groups) -> torch.Tensor:
    P, G = groups.hits.shape
    discount = 1.0 / torch.log2(torch.arange(G, dtype=torch.float64) + 2)
    penalty = (-discount / discount.sum()).float().expand(P, G)
    found = (groups.hits & groups.valid).any(dim=1, keepdim=True)
    return torch.where(found & ~groups.hits & groups.valid, penalty, torch.zeros(()))


REWARDS: dict[str, RewardFn] = {"rule": rule_reward, "ranking": ranking_reward}


def total_reward(groups, rewards: list[Callable], weights: list[float] | None = None) -> torch.Tensor:
    """Weighted sum of the reward functions (weights default to 1), 0 on empty slots.

    `groups`: anything with a bool `valid` [P, G] (ReRe's `Groups`, RPORec's
    `rere.rporec.rewards.ReasoningGroups`); each function must return [P, G]."""
    weights = weights or [1.0] * len(rewards)
    if len(weights) != len(rewards):
        raise ValueError(f"{len(weights)} reward weights for {len(rewards)} reward functions")
    total = torch.zeros(groups.valid.shape)
    for reward, weight in zip(rewards, weights):
        value = reward(groups)
        if value.shape != total.shape:
            name = getattr(reward, "__name__", repr(reward))
            raise ValueError(f"reward {name} returned shape {tuple(value.shape)}, expected [P, G] = {tuple(total.shape)}")
        total += weight * value.float().cpu()
    return torch.where(groups.valid, total, torch.zeros(()))


def group_advantages(rewards: torch.Tensor, valid: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean_G) / (std_G + eps) over each group's valid slots; 0 on empty slots.

    std is the unbiased one (torch.std, as TRL's GRPOTrainer that the ReRe code builds
    on); a group of identical rewards gets advantage 0."""
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    masked = torch.where(valid, rewards, torch.zeros(()))
    mean = masked.sum(dim=1, keepdim=True) / count
    var = torch.where(valid, (rewards - mean) ** 2, torch.zeros(())).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    return torch.where(valid, (rewards - mean) / (var.sqrt() + eps), torch.zeros(()))


def ranking_normaliser(G: int) -> float:
    """Z = sum_{j<G} 1/log2(j+2), for documentation and tests."""
    return sum(1.0 / math.log2(j + 2) for j in range(G))
