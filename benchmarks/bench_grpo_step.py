"""One full GRPO step (rollout + rewards + update) of rere against the reference recipe.

    pytest benchmarks/bench_grpo_step.py --benchmark-enable --benchmark-columns=min,median,max

Both sides start from the same weights and prompts and do one ReRe step each round:

- rere: `rere.sampler.beam_search` (constrained beam search, each prompt prefilled once),
  rewards and group advantages (`rere.trainer.rewards`), then the update with each group
  packed behind its prompt once (`pack_groups` + `CompletionScorer`, fused log-probs) for
  the policy and, without gradient, the reference model; `grpo_loss`, backward, gradient
  clipping, AdamW. This is `GRPOTrainer.step` without its data and logging plumbing.
- reference: what the ReRe code does on top of TRL: HF `generate(num_beams=G)` with the
  per-beam '-'-joined prefix dict processor (`bench_sampler.PrefixDictProcessor`), the
  completions mapped back to catalog items by a dict of token tuples, the same rewards;
  then TRL's layout for the update: one row [prompt | completion] per completion, the
  model's logits kept at the completion positions only (`logits_to_keep`), log_softmax over
  the vocabulary and a gather, for the reference model (without gradient) and the policy,
  the same `grpo_loss` accumulated over micro-batches, clipping, AdamW.

Setup as bench_sampler.py: SmolLM2-135M (else a small random Qwen2), 2 Amazon Industrial
test prompts with 10-item histories, the 3,686-title catalog, G = 16 beams. The target of
each prompt is the item at beam rank 2 of the untrained model's rollout, not the test row's
next item: an untrained model rarely puts the true next item among its 16 beams, and then
every advantage is 0 and the update has no gradient. Placed there, rewards, advantages and
gradients are non-zero; the work is the same either way.

extra_info: seconds per phase (rollout, rewards, update, total; mean over rounds), and on the
reference side the ratios reference / rere when both ran in the session. The reference test
also checks once that its first rollout returns the items (and tokens) of rere's, and how
far its first update's log-probs and gradient norm are from rere's; a mismatch is reported
(extra_info and a warning), not hidden, and does not fail the benchmark.

Under plain `pytest` (benchmarks disabled) the cases skip before loading anything: one
round takes minutes on a CPU.

The step functions are device-agnostic: benchmarks/gpu_grpo_step.py times them on CUDA.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass

import pytest
import torch
from transformers import LogitsProcessorList

from bench_sampler import BEAMS, N_PROMPTS, PrefixDictProcessor, amazon_case, history_prompts
from rere.index import CatalogIndex
from rere.sampler import beam_search
from rere.trainer.grpo_loss import grpo_loss
from rere.trainer.packed_logprobs import CompletionScorer, pack_groups
from rere.trainer.rewards import Groups, group_advantages, ranking_reward, rule_reward, total_reward

LR, BETA, MAX_GRAD_NORM = 1e-5, 1e-3, 0.3  # ReRe's reference setup (the authors' training script)
REWARDS = [rule_reward, ranking_reward]
TARGET_RANK = 2  # the planted target's beam rank (see the module doc)
# Rows per forward in the reference update (TRL's per_device_train_batch_size): a whole group
# (16 rows of ~550 tokens) would keep several GB of activations on this shared 23 GB machine.
CPU_ROWS_PER_FORWARD = 4
RERE_ROUNDS, REFERENCE_ROUNDS = 2, 1  # the reference round alone takes minutes on 2 cores


@dataclass
class Case:
    """Model, catalog and prompts shared by both sides, and the check rollout's result."""

    model: torch.nn.Module  # initial weights; each side trains its own copy
    index: CatalogIndex
    processor: PrefixDictProcessor  # built once: the reference code builds its dict at setup
    items_of: dict  # token tuple (EOS included) -> catalog items with that sequence
    ids: torch.Tensor  # [P, L] left-padded prompts on the model's device
    mask: torch.Tensor
    prompts: list  # P 1-D int64 CPU tensors, unpadded (pack_groups and the per-row layout)
    beams: int
    eos: int
    targets: torch.Tensor | None = None  # [P] item positions
    check_tokens: list | None = None  # rere's completions [P * G] on the initial weights
    check_items: list | None = None  # and the items they name (sorted lists)
    name: str = ""  # the model, for extra_info

    @property
    def device(self) -> torch.device:
        return self.ids.device


def build_case(model, index: CatalogIndex, seqs: list, prompt_ids: list, beams: int, eos: int) -> Case:
    """Pad the prompts, build the reference's dict processor and token -> items dict, and
    run rere's rollout once on the initial weights: it plants the targets and is what the
    reference's first rollout must reproduce."""
    device = next(model.parameters()).device
    width = max(map(len, prompt_ids))
    ids = torch.full((len(prompt_ids), width), eos, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompt_ids):  # left padding, as both generators expect
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    items_of: dict = {}
    for item, seq in enumerate(seqs):
        items_of.setdefault(tuple(seq), []).append(item)
    case = Case(model, index, PrefixDictProcessor(seqs, width), items_of, ids.to(device), mask.to(device),
                [torch.tensor(p, dtype=torch.int64) for p in prompt_ids], beams, eos)
    out = rere_rollout(model, case)
    case.targets = out.item_ids[:, TARGET_RANK].cpu()
    case.check_tokens, case.check_items = _rere_completions(out)
    return case


class Learner:
    """A policy (fresh copy of the initial weights), its frozen reference and AdamW."""

    def __init__(self, model):
        self.policy = copy.deepcopy(model).train()
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=LR, weight_decay=0.0)

    def apply_gradients(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


@dataclass
class StepResult:
    rollout_s: float
    reward_s: float
    update_s: float
    tokens: list  # [P * G] completions (token lists, EOS included)
    items: list  # [P * G] sorted item lists each completion names
    logprobs: torch.Tensor  # policy log-probs of every completion token (CPU, p, g, t order)
    grad_norm: float
    hits: int  # beams naming the target

    @property
    def total_s(self) -> float:
        return self.rollout_s + self.reward_s + self.update_s


def _now(device: torch.device) -> float:
    if device.type == "cuda":  # GPU work is asynchronous: wait for it before reading the clock
        torch.cuda.synchronize(device)
    return time.perf_counter()


def rewards_and_advantages(groups: Groups) -> torch.Tensor:
    return group_advantages(total_reward(groups, REWARDS), groups.valid)


# -- rere ---------------------------------------------------------------------------------

def rere_rollout(model, case: Case):
    training = model.training  # rollouts in eval mode, as GRPOTrainer; the mode is restored
    model.eval()
    with torch.no_grad():
        out = beam_search(model, case.index, case.ids, case.mask, num_beams=case.beams, eos_token_id=case.eos,
                          pad_token_id=case.eos)
    model.train(training)
    return out


def _rere_completions(out) -> tuple[list, list]:
    P, G = out.lengths.shape
    sequences, lengths = out.sequences.cpu(), out.lengths.cpu()
    tokens = [sequences[p, g, :lengths[p, g]].tolist() for p in range(P) for g in range(G)]
    return tokens, [sorted(out.items(p, g)) for p in range(P) for g in range(G)]


def rere_step(case: Case, learner: Learner) -> StepResult:
    device = case.device
    start = _now(device)
    out = rere_rollout(learner.policy, case)
    rolled = _now(device)
    groups = Groups.from_rollout(out, case.targets)
    advantages = rewards_and_advantages(groups)
    rewarded = _now(device)
    packed = pack_groups(case.prompts, out.sequences, out.lengths, pad_token_id=case.eos).to(device)
    with torch.no_grad():
        ref = CompletionScorer(learner.reference)(packed)
    logprobs = CompletionScorer(learner.policy)(packed)
    grpo_loss(logprobs, packed.sequence, advantages.reshape(-1), ref_logprobs=ref, beta=BETA).loss.backward()
    grad_norm = learner.apply_gradients()
    updated = _now(device)
    tokens, items = _rere_completions(out)
    return StepResult(rolled - start, rewarded - rolled, updated - rewarded, tokens, items, logprobs.detach().cpu(),
                      grad_norm, int((groups.hits & groups.valid).sum()))


# -- the reference recipe (HF generate + TRL's update layout) -------------------------------

def reference_rollout(model, case: Case) -> list:
    """HF beam search under the dict processor; the P * G completions, cut after EOS."""
    training = model.training
    model.eval()
    with torch.no_grad():
        sequences = model.generate(case.ids, attention_mask=case.mask, num_beams=case.beams,
                                   num_return_sequences=case.beams, do_sample=False, length_penalty=0.0,
                                   early_stopping=False, max_new_tokens=case.index.max_depth,
                                   eos_token_id=case.eos, pad_token_id=case.eos,
                                   logits_processor=LogitsProcessorList([case.processor]))
    model.train(training)
    completions = sequences[:, case.ids.shape[1]:].tolist()
    return [c[:c.index(case.eos) + 1] if case.eos in c else c for c in completions]


def reference_groups(case: Case, tokens: list) -> tuple[Groups, list]:
    """Catalog items of each completion through the token-tuple dict, as `Groups`."""
    P, G = len(case.prompts), case.beams
    items = [case.items_of.get(tuple(t), []) for t in tokens]
    first = torch.tensor([i[0] if i else -1 for i in items]).view(P, G)
    targets = case.targets.repeat_interleave(G).tolist()
    hits = torch.tensor([target in i for target, i in zip(targets, items)]).view(P, G)
    valid = torch.tensor([bool(i) for i in items]).view(P, G)
    return Groups(first, hits, valid, case.targets), [sorted(i) for i in items]


def per_sequence_logprobs(model, prompt: torch.Tensor, completions: list, pad: int) -> torch.Tensor:
    """TRL's layout: one row [prompt | completion | right padding] per completion; logits
    only at the positions predicting completion tokens (`logits_to_keep`), log_softmax over
    the vocabulary, the completion tokens gathered. Flat [N] in row, token order."""
    device = prompt.device
    width = max(map(len, completions))
    tokens = torch.full((len(completions), width), pad, dtype=torch.int64)
    real = torch.zeros(tokens.shape, dtype=torch.bool)
    for row, c in enumerate(completions):
        tokens[row, :len(c)] = torch.tensor(c)
        real[row, :len(c)] = True
    tokens, real = tokens.to(device), real.to(device)
    # All rows of a call share one prompt (callers split by group), so there is no left
    # padding and the default position ids are each row's own.
    input_ids = torch.cat([prompt.expand(len(completions), -1), tokens], dim=1)
    attention_mask = torch.cat([torch.ones(len(completions), prompt.numel(), dtype=torch.bool, device=device), real], 1)
    # The last width + 1 positions: the prompt's last token and every completion token; the
    # last one predicts nothing.
    logits = model(input_ids=input_ids, attention_mask=attention_mask.long(), logits_to_keep=width + 1).logits[:, :-1]
    # float32 log_softmax (bf16 on a GPU would lose precision in the log-sum-exp).
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None])[..., 0]
    return logprobs[real]


def reference_step(case: Case, learner: Learner, rows_per_forward: int = CPU_ROWS_PER_FORWARD) -> StepResult:
    device, P, G = case.device, len(case.prompts), case.beams
    if G % rows_per_forward:
        raise ValueError(f"rows_per_forward ({rows_per_forward}) must divide the group size ({G})")
    start = _now(device)
    tokens = reference_rollout(learner.policy, case)
    rolled = _now(device)
    groups, items = reference_groups(case, tokens)
    advantages = rewards_and_advantages(groups).reshape(-1)
    rewarded = _now(device)
    chunks = [(p, list(range(p * G + s, p * G + s + rows_per_forward)))
              for p in range(P) for s in range(0, G, rows_per_forward)]
    prompts = [prompt.to(device) for prompt in case.prompts]
    with torch.no_grad():  # TRL scores the reference for the whole batch before the loss
        refs = [per_sequence_logprobs(learner.reference, prompts[p], [tokens[s] for s in rows], case.eos)
                for p, rows in chunks]
    logprobs = []
    for (p, rows), ref in zip(chunks, refs):  # micro-batches, gradients accumulated
        lp = per_sequence_logprobs(learner.policy, prompts[p], [tokens[s] for s in rows], case.eos)
        sequence = torch.repeat_interleave(torch.arange(len(rows), device=device),
                                           torch.tensor([len(tokens[s]) for s in rows], device=device))
        # num_sequences = all P * G: each micro-batch's sum of per-completion means over the
        # whole step's count, so the accumulated loss is the mean over every completion.
        grpo_loss(lp, sequence, advantages[rows], ref_logprobs=ref, beta=BETA, num_sequences=P * G).loss.backward()
        logprobs.append(lp.detach().cpu())
    grad_norm = learner.apply_gradients()
    updated = _now(device)
    return StepResult(rolled - start, rewarded - rolled, updated - rewarded, tokens, items, torch.cat(logprobs),
                      grad_norm, int((groups.hits & groups.valid).sum()))


# -- checks and figures -------------------------------------------------------------------------

def compare_rollouts(case: Case, first: StepResult, rere_first: StepResult | None = None) -> dict:
    """The reference's first rollout (initial weights) against rere's on the same weights;
    with rere's first step too, how close the two updates' log-probs and gradients are."""
    differ = [s for s in range(len(first.items)) if first.items[s] != case.check_items[s]]
    tokens_differ = [s for s in range(len(first.tokens)) if first.tokens[s] != case.check_tokens[s]]
    found = {"items_match": not differ, "tokens_match": not tokens_differ}
    if differ:
        G = case.beams
        found["mismatched_slots"] = [(s // G, s % G) for s in differ[:10]]
        warnings.warn(f"rere and the reference rollout differ at {len(differ)} of {len(first.items)} slots "
                      f"(prompt, rank): {found['mismatched_slots']}")
    if rere_first is not None:
        found["grad_norm_rere"], found["grad_norm_reference"] = rere_first.grad_norm, first.grad_norm
        if not tokens_differ:  # same completions: the flat log-prob vectors line up
            found["max_logprob_diff"] = float((first.logprobs - rere_first.logprobs).abs().max())
    return found


def mean_phases(results: list) -> dict:
    n = len(results)
    return {f"{phase}_s": round(sum(getattr(r, f"{phase}_s") for r in results) / n, 3)
            for phase in ("rollout", "reward", "update", "total")}


# -- the benchmark ------------------------------------------------------------------------------

MEASURED: dict = {}  # side -> {"phases": ..., "first": StepResult}, for the cross-side figures


@pytest.fixture(scope="module")
def case():
    model, tokenizer, name, seqs, index = amazon_case()
    prompt_ids = tokenizer(history_prompts(N_PROMPTS))["input_ids"]
    built = build_case(model, index, seqs, prompt_ids, BEAMS, tokenizer.eos_token_id)
    built.name = name
    return built


def _benchmark_side(benchmark, request, side: str, step, rounds: int):
    if benchmark.disabled:  # checked before the fixture: skipping loads nothing
        pytest.skip("one GRPO step takes minutes on a CPU: run with --benchmark-enable")
    setup = request.getfixturevalue("case")
    benchmark.group = f"GRPO step: {len(setup.prompts)} prompts x {setup.beams} beams"
    learner = Learner(setup.model)
    results: list[StepResult] = []
    benchmark.pedantic(lambda: results.append(step(setup, learner)), rounds=rounds, warmup_rounds=0)
    phases = mean_phases(results)
    MEASURED[side] = {"phases": phases, "first": results[0]}
    benchmark.extra_info.update(model=setup.name, prompts=len(setup.prompts), beams=setup.beams,
                                prompt_tokens=[p.numel() for p in setup.prompts],
                                completion_tokens=sum(map(len, results[0].tokens)),
                                target_hits=[r.hits for r in results], **phases)
    return setup, results


def test_grpo_step_rere(benchmark, request):
    _benchmark_side(benchmark, request, "rere", rere_step, RERE_ROUNDS)


def test_grpo_step_reference(benchmark, request):
    setup, results = _benchmark_side(benchmark, request, "reference", reference_step, REFERENCE_ROUNDS)
    rere = MEASURED.get("rere")
    benchmark.extra_info.update(compare_rollouts(setup, results[0], rere and rere["first"]))
    if rere is not None:  # reference / rere, phase by phase (both measured in this session)
        ours, theirs = rere["phases"], MEASURED["reference"]["phases"]
        benchmark.extra_info.update({f"ratio_{phase}": round(theirs[f"{phase}_s"] / ours[f"{phase}_s"], 2)
                                     for phase in ("rollout", "update", "total")})
