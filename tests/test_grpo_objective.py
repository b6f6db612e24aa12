"""ReRe's rewards, group advantages, the GRPO loss types, and prefix-shared log-probs.

Each piece is checked against a plain re-statement of the formula (the ReRe paper and TRL's
GRPOTrainer, whose loss the ReRe code uses) written independently here, and the packed forward against the ordinary
per-sequence forward of Hugging Face models: values and gradients.
"""
from __future__ import annotations

import math

import pytest
import torch

from rere.trainer.grpo_loss import grpo_loss
from rere.trainer.packed_logprobs import CompletionScorer, pack_groups
from rere.trainer.rewards import (Groups, group_advantages, ranking_normaliser, ranking_reward, rule_reward,
                                  total_reward)
from tiny_models import ARCHITECTURES, tiny_model


def _groups(hits, valid=None):
    hits = torch.tensor(hits, dtype=torch.bool)
    valid = torch.ones_like(hits) if valid is None else torch.tensor(valid, dtype=torch.bool)
    P, G = hits.shape
    return Groups(torch.arange(P * G).view(P, G), hits, valid, torch.zeros(P, dtype=torch.int64))


# -- rewards -------------------------------------------------------------------------------

def test_ranking_reward_matches_the_formula():
    G = 4
    z = sum(1 / math.log2(j + 2) for j in range(G))
    groups = _groups([[False, False, True, False], [False] * 4])
    reward = ranking_reward(groups)
    expected_found = [-(1 / math.log2(i + 2)) / z if i != 2 else 0.0 for i in range(G)]
    assert reward[0].tolist() == pytest.approx(expected_found)
    assert reward[1].tolist() == [0.0] * 4  # target not among the beams: no ranking signal
    assert ranking_normaliser(G) == pytest.approx(z)
    # The penalty shrinks with rank: the top wrong beam is the hardest negative.
    assert reward[0, 0] < reward[0, 1] < reward[0, 3] < 0


def test_total_reward_is_rule_plus_ranking_and_zero_on_empty_slots():
    groups = _groups([[True, False, False]], valid=[[True, True, False]])
    total = total_reward(groups, [rule_reward, ranking_reward])
    z = ranking_normaliser(3)
    assert total[0].tolist() == pytest.approx([1.0, -(1 / math.log2(3)) / z, 0.0])
    with pytest.raises(ValueError, match="shape"):
        total_reward(groups, [lambda g: torch.zeros(5)])


def test_hits_use_every_item_a_duplicate_title_names():
    class Rollout:  # what rere.sampler returns: item lists in CSR form per slot
        item_ids = torch.tensor([[3, 7]])
        lengths = torch.tensor([[5, 4]])
        item_offsets = torch.tensor([0, 2, 3])
        item_values = torch.tensor([3, 9, 7])  # slot 0 names items 3 and 9 (one title)

    groups = Groups.from_rollout(Rollout, torch.tensor([9]))
    assert groups.hits.tolist() == [[True, False]]


def test_group_advantages_match_trl():
    rewards = torch.tensor([[1.0, -0.2, -0.1, 0.0], [0.5, 0.5, 0.5, 0.5]])
    valid = torch.ones_like(rewards, dtype=torch.bool)
    got = group_advantages(rewards, valid)
    mean, std = rewards.mean(1, keepdim=True), rewards.std(1, keepdim=True)
    assert torch.allclose(got, (rewards - mean) / (std + 1e-4))
    assert got[1].abs().max() == 0  # identical rewards: no signal
    masked = group_advantages(torch.tensor([[1.0, 0.0, 9.0]]), torch.tensor([[True, True, False]]))
    assert masked[0, 2] == 0 and torch.allclose(masked[0, :2], group_advantages(torch.tensor([[1.0, 0.0]]),
                                                                                torch.ones(1, 2, dtype=torch.bool))[0])


# -- the loss ------------------------------------------------------------------------------

def _reference_loss(logp, old, ref, seq_of, adv, beta, lo, hi, loss_type, max_len, tokens_in_step):
    """TRL's per-token formula, one sequence at a time."""
    per_seq = []
    for s in range(len(adv)):
        rows = [i for i in range(len(logp)) if seq_of[i] == s]
        if not rows:
            continue
        terms = []
        for i in rows:
            ratio = torch.exp(logp[i] - old[i])
            surrogate = torch.minimum(ratio * adv[s], torch.clamp(ratio, 1 - lo, 1 + hi) * adv[s])
            kl = torch.exp(ref[i] - logp[i]) - (ref[i] - logp[i]) - 1
            terms.append(-surrogate + beta * kl)
        per_seq.append(torch.stack(terms))
    if loss_type == "grpo":
        return torch.stack([t.mean() for t in per_seq]).mean()
    everything = torch.cat(per_seq)
    if loss_type == "bnpo":
        return everything.sum() / everything.numel()
    if loss_type == "dr_grpo":
        return everything.sum() / (len(adv) * max_len)
    return everything.sum() / tokens_in_step


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_types_match_the_reference(loss_type):
    g = torch.Generator().manual_seed(0)
    seq_of = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    logp = (-torch.rand(9, generator=g) * 3).requires_grad_()
    old = logp.detach() + torch.randn(9, generator=g) * 0.3  # ratios far enough from 1 to clip
    ref = logp.detach() + torch.randn(9, generator=g) * 0.5
    adv = torch.tensor([1.2, -0.7, 0.4])
    got = grpo_loss(logp, seq_of, adv, old_logprobs=old, ref_logprobs=ref, beta=0.04, epsilon_low=0.2,
                    epsilon_high=0.28, loss_type=loss_type, max_completion_length=6, tokens_in_step=20)
    want = _reference_loss(logp, old, ref, seq_of, adv, 0.04, 0.2, 0.28, loss_type, 6, 20)
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-6)
    (grad_got,) = torch.autograd.grad(got.loss, logp)
    (grad_want,) = torch.autograd.grad(want, logp)
    assert torch.allclose(grad_got, grad_want, atol=1e-7)
    assert 0 < got.clip_fraction < 1


def test_one_pass_loss_is_the_policy_gradient():
    """old = logp.detach(): ratio 1, so d loss / d logp_t = -A_s / len_s / S (no KL)."""
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    seq_of, adv = torch.tensor([0, 0, 1]), torch.tensor([2.0, -1.0])
    parts = grpo_loss(logp, seq_of, adv, beta=0.0)
    (grad,) = torch.autograd.grad(parts.loss, logp)
    assert grad.tolist() == pytest.approx([-2.0 / 2 / 2, -2.0 / 2 / 2, 1.0 / 1 / 2])
    assert parts.clip_fraction == 0


def test_kl_is_k3_and_zero_at_the_reference():
    logp = torch.tensor([-1.0, -2.0])
    parts = grpo_loss(logp, torch.tensor([0, 0]), torch.tensor([0.0]), ref_logprobs=logp.clone(), beta=1.0)
    assert parts.kl == 0 and parts.loss.item() == 0
    parts = grpo_loss(logp, torch.tensor([0, 0]), torch.tensor([0.0]), ref_logprobs=logp - 1, beta=1.0)
    assert parts.kl == pytest.approx(math.exp(-1) + 1 - 1)


# -- prefix-shared log-probs ---------------------------------------------------------------

def _per_sequence(model, prompts, completions, lengths):
    """The plain computation: each prompt + completion as its own sequence, full logits."""
    rows = []
    for p, prompt in enumerate(prompts):
        for g in range(lengths.shape[1]):
            n, length = prompt.numel(), int(lengths[p, g])
            if length == 0:
                continue
            ids = torch.cat([prompt, completions[p, g, :length]])[None]
            logprobs = torch.log_softmax(model(ids).logits.float(), -1)[0, n - 1:n - 1 + length]
            rows.append(logprobs.gather(1, completions[p, g, :length, None])[:, 0])
    return torch.cat(rows)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("share_prompt", [True, False])
def test_packed_logprobs_and_gradients_equal_per_sequence(arch, share_prompt):
    V = 97
    model = tiny_model(arch, V, seed=3).train()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, V, (n,), generator=g) for n in (5, 11, 1)]
    completions = torch.randint(1, V, (3, 4, 6), generator=g)
    lengths = torch.tensor([[6, 1, 3, 2], [4, 0, 6, 5], [1, 2, 3, 6]])  # an empty slot and 1-token completions
    packed = pack_groups(prompts, completions, lengths, share_prompt=share_prompt)
    weights = torch.randn(int(lengths.sum()), generator=g)

    got = CompletionScorer(model)(packed)
    (got * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = _per_sequence(model, prompts, completions, lengths)
    (want * weights).sum().backward()

    assert torch.allclose(got, want, atol=2e-5)
    for (name, param), grad in zip(model.named_parameters(), grads):
        assert torch.allclose(grad, param.grad, atol=1e-4, rtol=1e-4), name
    assert packed.sequence.tolist() == [s for s, n in enumerate(lengths.reshape(-1).tolist()) for _ in range(n)]


def test_packing_runs_each_prompt_once():
    prompts = [torch.arange(1, 401)]
    completions = torch.ones(1, 16, 30, dtype=torch.int64)
    lengths = torch.full((1, 16), 30)
    shared = pack_groups(prompts, completions, lengths)
    plain = pack_groups(prompts, completions, lengths, share_prompt=False)
    assert shared.input_ids.numel() == 400 + 16 * 29
    assert plain.input_ids.numel() == 16 * (400 + 29)


def test_packing_rejects_bad_shapes():
    with pytest.raises(ValueError, match="prompts"):
        pack_groups([torch.arange(3)], torch.ones(2, 2, 3, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty prompt"):
        pack_groups([torch.arange(0)], torch.ones(1, 2, 3, dtype=torch.int64), torch.ones(1, 2, dtype=torch.int64))
