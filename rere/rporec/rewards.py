"""RPORec's verifiable reward: how well the frozen RecHead ranks the target given a reasoning.

A reward function is any callable `reward(groups: ReasoningGroups) -> float tensor [P, G]`
(prompt p, sample g); stage 2 sums the configured ones. The default, `rechead_reward`, is

    reward = well_formed * (ndcg_weight * NDCG(rank) + hit_bonus * [rank < hit_k]
                            - length_cost * tokens / max_new_tokens)

with rank the target's 0-based rank over the whole catalog under the head, and
NDCG(rank) = 1 / log2(rank + 2) (0 beyond `ndcg_k` when it is set). A malformed reasoning
(no `</think>`, no answer tags, text after them) earns 0: the format check multiplies, so
the shaping terms never pay for a reasoning the format rejects (`format_check=False` drops
it, for models too small to follow the format). Stage 2 sums the reward
functions with `rere.trainer.rewards.total_reward`, as ReRe does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class ReasoningGroups:
    """What reward functions see, per prompt p and sample g."""

    ranks: torch.Tensor  # int64 [P, G]: the target's rank under the head given that reasoning
    well_formed: torch.Tensor  # bool [P, G]
    lengths: torch.Tensor  # int64 [P, G]: completion tokens
    targets: torch.Tensor  # int64 [P]: target item (catalog position)
    texts: list[list[str]] | None = None  # the completions, for custom rewards
    examples: list | None = None

    @property
    def valid(self) -> torch.Tensor:
        return self.lengths > 0


RewardFn = Callable[[ReasoningGroups], torch.Tensor]


def ndcg_of_ranks(ranks: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """1 / log2(rank + 2) for 0-based ranks (one relevant item); 0 at rank >= k when k is set."""
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    if k is not None:
        gain = torch.where(ranks < k, gain, torch.zeros((), dtype=gain.dtype))
    return gain.float()


def rechead_reward(*, ndcg_weight: float = 1.0, ndcg_k: int | None = None, hit_bonus: float = 0.0,
                   hit_k: int = 10, length_cost: float = 0.0, max_new_tokens: int = 128,
                   format_check: bool = True) -> RewardFn:
    """The default reward (module doc) with these weights; `format_check=False` drops the
    format factor (SmolLM2-135M wrote the format in 2 of its first 512 reasonings on the
    Amazon prompts, which leaves GRPO almost no reward to learn from)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")

    def reward(groups: ReasoningGroups) -> torch.Tensor:
        value = ndcg_weight * ndcg_of_ranks(groups.ranks, ndcg_k)
        if hit_bonus:
            value = value + hit_bonus * (groups.ranks < hit_k).float()
        if length_cost:
            value = value - length_cost * groups.lengths.float() / max_new_tokens
        return torch.where(groups.well_formed, value, torch.zeros(())) if format_check else value

    reward.__name__ = "rechead_reward"
    return reward
