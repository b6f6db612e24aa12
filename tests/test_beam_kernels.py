"""trie_masked_log_softmax, beam_topk and beam_step (row pass + merge) against a float64 reference.

Triton runs on KERNEL_DEVICE: the GPU when there is one, else the CPU under
TRITON_INTERPRET=1 (set by conftest.py), so shapes stay small.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import KERNEL_DEVICE
from rere.index import CatalogIndex
from rere.kernels import beam_step, beam_topk, trie_masked_log_softmax
from rere.kernels.beam_topk import BeamCandidates
from rere.kernels.numerics import SCORE_ATOL, assert_candidates_close, candidate_differences
from rere.synthetic import title_like_catalog

BACKENDS = [("torch", "cpu"), ("triton", KERNEL_DEVICE)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 1e-4}  # on fp32 math of quantized logits


def small_catalog(vocab: int, n_items: int = 300, seed: int = 0) -> CatalogIndex:
    """Items whose tokens cover awkward cases: shared prefixes, long unique tails, EOS."""
    tokens, offsets = title_like_catalog(n_items, vocab_size=vocab, eos_token_id=vocab - 1, min_len=1, max_len=6,
                                         seed=seed)
    return CatalogIndex.from_flat(tokens, offsets, vocab_size=vocab)


def random_states(index: CatalogIndex, n: int, seed: int) -> torch.Tensor:
    """States reached by walking random allowed tokens 0-4 steps from the root (some invalid)."""
    rng = np.random.default_rng(seed)
    states = index.root_states(n)
    for _ in range(int(rng.integers(0, 5))):
        offsets, tokens = index.allowed(states)
        pick = [int(tokens[offsets[r] + rng.integers(0, offsets[r + 1] - offsets[r])]) if offsets[r + 1] > offsets[r]
                else 0 for r in range(n)]
        states = index.advance(states, torch.tensor(pick))
    states[rng.random(n) < 0.05] = CatalogIndex.INVALID
    return states


def reference_candidates(logits, states, beam_scores, index, renormalize=False):
    """Per prompt: [(total, parent, token, token_score)] over every allowed child, float64."""
    n_prompts, beams = beam_scores.shape
    logp = torch.log_softmax(logits.double(), -1)
    offsets, tokens = index.allowed(states)
    out = []
    for p in range(n_prompts):
        cands = []
        for b in range(beams):
            r = p * beams + b
            toks = tokens[offsets[r]:offsets[r + 1]].long()
            row = logp[r, toks]
            if renormalize and toks.numel():
                row = logits[r, toks].double() - torch.logsumexp(logits[r, toks].double(), 0)
            for t, s in zip(toks.tolist(), row.tolist()):
                cands.append((float(beam_scores[p, b]) + s, b, t, s))
        out.append(cands)
    return out


def best_k(cands, k):
    """Reference order: score descending (NaN last), then parent, then token."""
    return sorted(cands, key=lambda c: (math.isnan(c[0]), -c[0] if not math.isnan(c[0]) else 0, c[1], c[2]))[:k]


def check_candidates(got, cands_per_prompt, k, tol):
    for p, cands in enumerate(cands_per_prompt):
        want = best_k(cands, k)
        n = len(want)
        parents, tokens, scores = got.parents[p].tolist(), got.tokens[p].tolist(), got.scores[p].double()
        assert parents[n:] == [-1] * (k - n) and tokens[n:] == [-1] * (k - n)
        assert torch.all(torch.isneginf(scores[n:]))
        by_key = {(c[1], c[2]): c for c in cands}
        for j in range(n):
            c = by_key[(parents[j], tokens[j])]  # a real candidate of this prompt ...
            assert math.isclose(float(scores[j]), c[0], rel_tol=tol, abs_tol=tol) or (math.isnan(c[0]) and math.isnan(float(scores[j])))
            assert math.isclose(float(got.token_scores[p, j]), c[3], rel_tol=tol, abs_tol=tol) or math.isnan(c[3])
        # ... and the scores are the k best, in order.
        ref_scores = torch.tensor([c[0] for c in want], dtype=torch.float64)
        finite = ~torch.isnan(ref_scores)
        assert torch.allclose(scores[:n][finite], ref_scores[finite], rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("vocab, rows", [(97, 6), (1000, 1), (2500, 9)])  # V not a multiple of the block; R = 1
def test_trie_masked_log_softmax(backend, device, dtype, renormalize, vocab, rows):
    index = small_catalog(vocab)
    states = random_states(index, rows, seed=vocab + rows)
    logits = (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    got = trie_masked_log_softmax(logits.to(device), states.to(device), index.to(device).tensors,
                                  renormalize=renormalize, backend=backend)
    offsets, tokens, nxt = index.allowed(states, with_next_states=True)
    assert torch.equal(got.offsets.cpu(), offsets) and torch.equal(got.tokens.cpu(), tokens)
    assert torch.equal(got.next_states.cpu(), nxt)
    ref = [c[3] for cands in reference_candidates(logits, states, torch.zeros(rows, 1), index, renormalize)
           for c in cands]
    assert torch.allclose(got.scores.cpu().double(), torch.tensor(ref, dtype=torch.float64), rtol=TOL[dtype],
                          atol=TOL[dtype])


OPS = {
    "beam_topk": lambda logits, states, beam_scores, t, k, backend: beam_topk(
        beam_scores, trie_masked_log_softmax(logits, states, t, backend=backend), k, backend=backend),
    "beam_step": lambda logits, states, beam_scores, t, k, backend: beam_step(
        logits, states, beam_scores, t, k, backend=backend),
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prompts, beams, k, vocab", [(1, 1, 1, 97), (2, 3, 6, 97), (3, 4, 40, 1000), (2, 2, 3, 2500)])
def test_beam_ops_match_reference(op, backend, device, dtype, prompts, beams, k, vocab):
    """Includes k larger than the candidates (k=40 over few children) and R = 1."""
    index = small_catalog(vocab, seed=prompts)
    rows = prompts * beams
    states = random_states(index, rows, seed=rows + k)
    gen = torch.Generator().manual_seed(k)
    logits = (torch.randn(rows, vocab, generator=gen) * 2).to(dtype)
    beam_scores = -torch.rand(prompts, beams, generator=gen) * 4
    got = OPS[op](logits.to(device), states.to(device), beam_scores.to(device), index.to(device).tensors, k, backend)
    cands = reference_candidates(logits, states, beam_scores, index)
    check_candidates(_cpu(got), cands, k, TOL[dtype])
    # next states are where the trie goes on that token
    for p in range(prompts):
        for j in range(k):
            parent, token = int(got.parents[p, j]), int(got.tokens[p, j])
            if parent >= 0:
                want = index.advance(states[p * beams + parent:p * beams + parent + 1], [token])
                assert int(got.next_states[p, j]) == int(want[0])


def _cpu(c):
    return type(c)(*(getattr(c, f).cpu() for f in c.__dataclass_fields__))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_ties_break_to_lower_parent_then_lower_token(op, backend, device):
    """Equal scores everywhere: the order must be (parent, token) ascending, the order of a
    stable descending sort of the dense [P, B*V] tensor. (torch.topk promises no order among
    ties: on the CPU, torch 2.13 returns tied entries out of index order.)"""
    index = CatalogIndex.from_sequences([[1, 9], [2, 9], [3, 9], [5, 9], [7, 9]], vocab_size=10)
    states = index.root_states(3)
    logits = torch.zeros(3, 10)
    beam_scores = torch.zeros(1, 3)
    got = _cpu(OPS[op](logits.to(device), states.to(device), beam_scores.to(device), index.to(device).tensors, 8, backend))
    assert got.parents[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert got.tokens[0].tolist() == [1, 2, 3, 5, 7, 1, 2, 3]
    dense = torch.full((3, 10), float("-inf"))
    dense[:, [1, 2, 3, 5, 7]] = torch.log_softmax(logits, -1)[:, [1, 2, 3, 5, 7]]
    flat = torch.sort(dense.reshape(1, -1), descending=True, stable=True).indices[:, :8]
    assert (flat[0] // 10).tolist() == got.parents[0].tolist() and (flat[0] % 10).tolist() == got.tokens[0].tolist()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_inf_and_nan_logits(op, backend, device):
    """-inf logits rank below finite ones; a NaN row scores NaN and ranks below -inf."""
    index = CatalogIndex.from_sequences([[1, 9], [2, 9], [3, 9]], vocab_size=10)
    states = index.root_states(3)
    logits = torch.zeros(3, 10)
    logits[0, 1] = float("-inf")
    logits[1, 4] = float("nan")  # token 4 is not even allowed: the whole row is NaN anyway
    beam_scores = torch.zeros(1, 3)
    got = _cpu(OPS[op](logits.to(device), states.to(device), beam_scores.to(device), index.to(device).tensors, 9, backend))
    assert got.parents[0].tolist() == [0, 0, 2, 2, 2, 0, 1, 1, 1]
    assert got.tokens[0].tolist() == [2, 3, 1, 2, 3, 1, 1, 2, 3]
    assert torch.isneginf(got.scores[0, 5]) and torch.isnan(got.scores[0, 6:]).all()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_fan_out_extremes(op, backend, device):
    """A root with 12,000 children beside beams with a single forced token or only EOS."""
    vocab = 12_500
    seqs = [[t, vocab - 1] for t in range(12_000)] + [[12_001, 12_002, 12_003, vocab - 1]]
    index = CatalogIndex.from_sequences(seqs, vocab_size=vocab)
    s_inside = index.advance(index.advance(index.root_states(1), [12_001]), [12_002])  # forced: 12_003
    s_eos = index.advance(index.root_states(1), [5])  # only EOS allowed
    states = torch.cat([index.root_states(1), s_inside, s_eos, torch.tensor([CatalogIndex.INVALID])])
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(0))
    beam_scores = torch.tensor([[-30.0, 0.0, -1.0, 0.0]])  # the forced and EOS beams lead
    got = _cpu(OPS[op](logits.to(device), states.to(device), beam_scores.to(device), index.to(device).tensors, 5, backend))
    check_candidates(got, reference_candidates(logits, states, beam_scores, index), 5, 1e-5)
    logp = torch.log_softmax(logits.double(), -1)
    pairs = dict(zip(zip(got.parents[0].tolist(), got.tokens[0].tolist()), got.scores[0].tolist()))
    assert math.isclose(pairs[(1, 12_003)], 0.0 + float(logp[1, 12_003]), rel_tol=1e-5)
    assert math.isclose(pairs[(2, vocab - 1)], -1.0 + float(logp[2, vocab - 1]), rel_tol=1e-5)
    assert sum(parent == 0 for parent, _ in pairs) == 3  # then the root's best children
    assert not any(parent == 3 for parent, _ in pairs)  # the invalid beam has no candidates


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_uneven_prompts(op, backend, device):
    """One prompt with thousands of candidates beside prompts with one or none (the torch
    twin switches from its padded grid to a sort-based segmented top-k here)."""
    vocab = 5_000
    index = CatalogIndex.from_sequences([[t, vocab - 1] for t in range(4_000)] + [[4_500, 4_501, vocab - 1]],
                                        vocab_size=vocab)
    inside = index.advance(index.root_states(1), [4_500])
    states = torch.cat([index.root_states(2), inside, inside, torch.full((4,), CatalogIndex.INVALID)])
    logits = torch.randn(8, vocab, generator=torch.Generator().manual_seed(2))
    beam_scores = -torch.rand(4, 2, generator=torch.Generator().manual_seed(3))
    got = _cpu(OPS[op](logits.to(device), states.to(device), beam_scores.to(device), index.to(device).tensors, 4, backend))
    check_candidates(got, reference_candidates(logits, states, beam_scores, index), 4, 1e-5)
    assert got.parents[3].tolist() == [-1] * 4  # no candidates at all


def _candidates(parents, tokens, scores):
    parents, tokens = torch.tensor([parents]), torch.tensor([tokens])
    return BeamCandidates(parents, tokens, parents * 100 + tokens, torch.tensor([scores]), torch.tensor([scores]))


def test_the_gpu_guarantee_allows_near_ties_to_swap_and_nothing_else():
    """rere.kernels.numerics: what a compiled step may differ from its torch twin by."""
    want = _candidates([0, 1, 0, 2], [5, 6, 7, 8], [-1.0, -2.0, -2.0 + SCORE_ATOL / 2, -3.0])
    assert candidate_differences(want, want) == []
    swapped = _candidates([0, 0, 1, 2], [5, 7, 6, 8], [-1.0, -2.0 + SCORE_ATOL / 2, -2.0, -3.0])
    assert candidate_differences(swapped, want) == []  # a near-tie, either order
    at_the_cut = _candidates([0, 1, 0, 3], [5, 6, 7, 9], [-1.0, -2.0, -2.0, -3.0 + SCORE_ATOL / 3])
    assert candidate_differences(at_the_cut, want) == []  # a candidate tied with the last one
    wrong = _candidates([0, 2, 0, 1], [5, 8, 7, 6], [-1.0, -2.0, -2.0, -3.0])
    assert candidate_differences(wrong, want)  # (2, 8) is no near-tie of (1, 6)
    off = _candidates([0, 1, 0, 2], [5, 6, 7, 8], [-1.0, -2.0 + 3 * SCORE_ATOL, -2.0, -3.0])
    assert candidate_differences(off, want)
    with pytest.raises(AssertionError, match="slot 1"):
        assert_candidates_close(off, want)


@pytest.mark.gpu
@pytest.mark.parametrize("beams", [16, 50])  # training's G, and evaluation's 50 (K_PAD = 128)
def test_triton_step_on_gpu_is_sync_free_and_matches_torch_at_full_size(beams):
    """V = 151,936 over a 100k-item catalog, 16 prompts: the two-launch Triton step matches
    the torch twin as rere.kernels.numerics guarantees, without a host synchronisation."""
    tokens, offsets = title_like_catalog(100_000)
    index = CatalogIndex.from_flat(tokens, offsets, vocab_size=151_936)
    gpu = index.to("cuda")
    states = random_states(index, 16 * beams, seed=7).cuda()
    logits = torch.randn(16 * beams, 151_936, device="cuda", dtype=torch.bfloat16)
    beam_scores = -torch.rand(16, beams, device="cuda") * 3
    want = beam_step(logits, states, beam_scores, gpu.tensors, 2 * beams, backend="torch")
    beam_step(logits, states, beam_scores, gpu.tensors, 2 * beams, backend="triton")  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = beam_step(logits, states, beam_scores, gpu.tensors, 2 * beams, backend="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_candidates_close(got, want)
