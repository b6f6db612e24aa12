"""RPORec's reward: format check x (NDCG of the head's rank of the target + shaping)."""
from __future__ import annotations

import math

import pytest
import torch

from rere.rporec.rewards import ReasoningGroups, ndcg_of_ranks, rechead_reward
from rere.trainer.rewards import total_reward


def groups(ranks, formed, lengths):
    return ReasoningGroups(torch.tensor(ranks), torch.tensor(formed), torch.tensor(lengths), torch.tensor([0, 1]))


def test_ndcg_of_ranks():
    assert ndcg_of_ranks(torch.tensor([0, 1, 2, 999_999])).tolist() == pytest.approx(
        [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(1_000_001)])
    assert ndcg_of_ranks(torch.tensor([0, 9, 10]), k=10).tolist() == pytest.approx([1.0, 1 / math.log2(11), 0.0])


def test_the_format_check_multiplies_everything():
    g = groups([[0, 2], [10, 0]], [[True, False], [True, True]], [[50, 10], [100, 128]])
    plain = rechead_reward()(g)
    torch.testing.assert_close(plain, torch.tensor([[1.0, 0.0], [1 / math.log2(12), 1.0]]))
    shaped = rechead_reward(ndcg_weight=2.0, hit_bonus=0.5, hit_k=10, length_cost=0.1, max_new_tokens=100)(g)
    torch.testing.assert_close(shaped, torch.tensor([[2.0 + 0.5 - 0.05, 0.0],  # malformed: 0, shaping too
                                                     [2 / math.log2(12) - 0.1, 2.0 + 0.5 - 0.128]]))
    unchecked = rechead_reward(format_check=False)(g)
    torch.testing.assert_close(unchecked[0, 1], torch.tensor(0.5))  # the malformed reasoning is scored too


def test_rewards_sum_through_the_trainers_total_reward_and_shapes_are_checked():
    g = groups([[0, 1], [2, 3]], [[True] * 2] * 2, [[5, 0], [5, 5]])  # slot (0, 1) is empty
    total = total_reward(g, [rechead_reward(), lambda _: torch.ones(2, 2)])
    assert total[0, 1] == 0.0 and total[0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"returned shape \(2,\), expected \[P, G\] = \(2, 2\)"):
        total_reward(g, [lambda _: torch.ones(2)])
    with pytest.raises(ValueError, match="max_new_tokens"):
        rechead_reward(max_new_tokens=0)
