"""rere.sampler.sampling.sample: constrained multinomial sampling, checked against a plain
reference walk that runs a full forward per prefix (no cache, no trie, HF's warpers)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from conftest import KERNEL_DEVICE
from rere.index import CatalogIndex
from rere.sampler.sampling import SampleOutput, filter_top_k_top_p, sample
from sampler_fixtures import EOS, PAD, VOCAB, catalog, prompts
from tiny_models import ARCHITECTURES, tiny_model


# A small catalog with shared prefixes (several renormalised steps) and different lengths.
SMALL = [[5, 6, EOS], [5, 7, 8, EOS], [5, 7, 9, EOS], [10, EOS], [11, 12, EOS]]


def unpadded(ids, mask, p):
    return ids[p][mask[p].bool()].tolist()


class Reference:
    """The constrained distribution computed the plain way: for each prefix, a full forward
    over prompt + prefix, the catalog's next tokens from a dict, HF's warpers on a dense row."""

    def __init__(self, model, seqs, temperature=1.0, top_k=None, top_p=None):
        self.model, self.seqs, self.temperature = model, seqs, temperature
        self.warpers = ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p else [])
        self._logits = {}

    def logits(self, tokens):
        key = tuple(tokens)
        if key not in self._logits:
            with torch.no_grad():
                self._logits[key] = self.model(input_ids=torch.tensor([tokens])).logits[0, -1].float()
        return self._logits[key] / self.temperature

    def step(self, prompt, prefix, seqs):
        """Sampling log-probs [V] after `prefix` (-inf outside the allowed, kept tokens)."""
        allowed = sorted({s[len(prefix)] for s in seqs if s[:len(prefix)] == prefix and len(s) > len(prefix)})
        scores = torch.full((VOCAB,), float("-inf"))
        scores[allowed] = torch.log_softmax(self.logits(prompt + prefix)[allowed], -1)
        for warper in self.warpers:
            scores = torch.log_softmax(warper(None, scores[None])[0], -1)
        return scores

    def probabilities(self, prompt, excluded=()):
        """Exact probability of every catalog item (0 for the excluded)."""
        kept = [s for i, s in enumerate(self.seqs) if i not in set(excluded)]
        probs = []
        for seq in self.seqs:
            if seq not in kept:
                probs.append(0.0)
                continue
            logp = sum(float(self.step(prompt, seq[:d], kept)[seq[d]]) for d in range(len(seq)))
            probs.append(math.exp(logp))
        return np.array(probs)

    def greedy(self, prompt):
        prefix = []
        while not prefix or prefix[-1] != EOS:
            prefix.append(int(self.step(prompt, prefix, self.seqs).argmax()))
        return prefix


def completions(out: SampleOutput, p):
    return [out.sequences[p, g, :out.lengths[p, g]].tolist() for g in range(out.lengths.shape[1])]


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- validity
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_sample_is_a_catalog_item_and_its_sequence(arch):
    model = tiny_model(arch, VOCAB, seed=1)
    seqs = catalog(150, seed=2)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(3, seed=3)
    out = sample(model, index, ids, mask, num_samples=32, temperature=1.5, eos_token_id=EOS, pad_token_id=PAD,
                 generator=seeded())
    T = index.max_depth
    assert out.sequences.shape == (3, 32, T) and out.token_logprobs.shape == (3, 32, T)
    assert out.sampling_logprobs.shape == (3, 32, T) and out.item_ids.shape == (3, 32)
    assert out.valid.all()
    for p in range(3):
        for g, tokens in enumerate(completions(out, p)):
            item = int(out.item_ids[p, g])
            assert tokens == seqs[item] and out.items(p, g) == [item]
            assert (out.sequences[p, g, len(tokens):] == PAD).all()
            assert (out.token_logprobs[p, g, len(tokens):] == 0).all()
            assert (out.token_logprobs[p, g, :len(tokens)] < 0).all()
            assert (out.sampling_logprobs[p, g, :len(tokens)] <= 0).all()
    assert len({tuple(t) for p in range(3) for t in completions(out, p)}) > 10  # samples, not one path


def test_duplicate_identifiers_name_every_item_unless_excluded():
    model = tiny_model("qwen2", VOCAB)
    seqs = [[5, 6, EOS], [5, 6, EOS], [7, EOS]]
    index = CatalogIndex.from_sequences(seqs, [10, 11, 12], vocab_size=VOCAB)
    ids, mask = prompts(2, seed=2)
    out = sample(model, index, ids, mask, num_samples=64, temperature=3.0, eos_token_id=EOS,
                 exclude_items=[[], [10]], generator=seeded())
    assert {tuple(out.items(0, g)) for g in range(64)} == {(10, 11), (12,)}
    assert {tuple(out.items(1, g)) for g in range(64)} == {(11,), (12,)}
    assert set(out.item_ids[1].tolist()) == {11, 12}


def test_reproducible_with_a_seeded_generator():
    model = tiny_model("llama", VOCAB, seed=4)
    index = CatalogIndex.from_sequences(catalog(100, seed=5), vocab_size=VOCAB)
    ids, mask = prompts(2, seed=6)
    run = lambda seed: sample(model, index, ids, mask, num_samples=16, temperature=2.0, top_k=5, top_p=0.9,  # noqa: E731
                              eos_token_id=EOS, generator=seeded(seed))
    a, b, c = run(7), run(7), run(8)
    for name in ("sequences", "lengths", "token_logprobs", "sampling_logprobs", "item_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.sequences, c.sequences)


# ---------------------------------------------------------------------- distributions
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("temperature, top_k, top_p, exclude", [
    (1.0, None, None, None),
    (2.5, None, None, None),
    (0.7, None, None, None),
    (1.5, 2, None, None),
    (2.0, None, 0.75, None),
    (2.0, 2, 0.9, None),
    (1.5, None, None, [[0], [2, 3]]),
])
def test_empirical_distribution_matches_the_exact_constrained_probabilities(arch, temperature, top_k, top_p, exclude):
    model = tiny_model(arch, VOCAB, seed=11)
    index = CatalogIndex.from_sequences(SMALL, vocab_size=VOCAB)
    ids, mask = prompts(2, seed=12)
    n = 3000
    out = sample(model, index, ids, mask, num_samples=n, temperature=temperature, top_k=top_k, top_p=top_p,
                 exclude_items=exclude, eos_token_id=EOS, generator=seeded(13))
    reference = Reference(model, SMALL, temperature, top_k, top_p)
    for p in range(2):
        prompt = unpadded(ids, mask, p)
        exact = reference.probabilities(prompt, exclude[p] if exclude else ())
        assert exact.sum() == pytest.approx(1.0, abs=1e-5)
        counts = np.bincount(out.item_ids[p].numpy(), minlength=len(SMALL))
        assert counts.sum() == n
        assert (counts[exact == 0] == 0).all()  # truncated or excluded: never drawn
        sigma = np.sqrt(exact * (1 - exact) / n)
        assert np.all(np.abs(counts / n - exact) <= 4.5 * sigma + 1e-3), (p, counts / n, exact)
        # sampling_logprobs add up to the exact log-probability of each sample's item
        summed = out.sampling_logprobs[p].sum(-1).double().exp().numpy()
        assert np.allclose(summed, exact[out.item_ids[p].numpy()], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_temperature_sharpens_and_flattens_the_distribution(arch):
    model = tiny_model(arch, VOCAB, seed=11)
    index = CatalogIndex.from_sequences(SMALL, vocab_size=VOCAB)
    ids, mask = prompts(1, seed=12)
    entropy = {}
    for temperature in (0.3, 1.0, 4.0):
        out = sample(model, index, ids, mask, num_samples=2000, temperature=temperature, eos_token_id=EOS,
                     generator=seeded(14))
        freq = np.bincount(out.item_ids[0].numpy(), minlength=len(SMALL)) / 2000
        entropy[temperature] = -(freq[freq > 0] * np.log(freq[freq > 0])).sum()
    assert entropy[0.3] < entropy[1.0] < entropy[4.0]
    assert entropy[4.0] > 0.8 * math.log(len(SMALL))  # nearly uniform over the allowed steps
    cold = sample(model, index, ids, mask, num_samples=64, temperature=1e-3, eos_token_id=EOS, generator=seeded())
    greedy = Reference(model, SMALL).greedy(unpadded(ids, mask, 0))
    assert all(c == greedy for c in completions(cold, 0))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("truncation", [dict(top_k=1), dict(top_p=1e-6), dict(top_k=1, top_p=0.5)])
def test_top_k_1_or_tiny_top_p_gives_the_greedy_constrained_path(arch, truncation):
    model = tiny_model(arch, VOCAB, seed=21)
    seqs = catalog(120, seed=22)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(3, seed=23)
    out = sample(model, index, ids, mask, num_samples=8, temperature=2.0, eos_token_id=EOS,
                 generator=seeded(), **truncation)
    reference = Reference(model, seqs)  # greedy does not depend on the temperature
    for p in range(3):
        greedy = reference.greedy(unpadded(ids, mask, p))
        assert all(c == greedy for c in completions(out, p)), p
    assert (out.sampling_logprobs == 0).all()  # one token possible at every step


# ------------------------------------------------------------------------- log-probs
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (1.7, 3)])
def test_token_logprobs_equal_a_full_recompute(arch, temperature, top_k):
    model = tiny_model(arch, VOCAB, seed=31)
    seqs = catalog(80, seed=32)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(3, seed=33, lengths=(2, 12))
    out = sample(model, index, ids, mask, num_samples=4, temperature=temperature, top_k=top_k, eos_token_id=EOS,
                 exclude_items=[[0, 1], [], [5]], generator=seeded())
    for p in range(3):
        prompt = unpadded(ids, mask, p)
        for g, tokens in enumerate(completions(out, p)):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1]
            want = torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
            assert torch.allclose(out.token_logprobs[p, g, :len(tokens)], want, atol=1e-4), (p, g)


# ------------------------------------------------------------------------- exclusion
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_excluded_items_never_appear(arch):
    model = tiny_model(arch, VOCAB, seed=41)
    seqs = catalog(40, seed=42, max_len=3, alphabet=8)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(2, seed=43)
    plain = sample(model, index, ids, mask, num_samples=200, temperature=2.0, eos_token_id=EOS, generator=seeded())
    # exclude each prompt's most frequent items (and, for prompt 1, most of the catalog)
    exclude = [np.bincount(plain.item_ids[0].numpy()).argsort()[-5:].tolist(), list(range(len(seqs) - 3))]
    out = sample(model, index, ids, mask, num_samples=200, temperature=2.0, eos_token_id=EOS,
                 exclude_items=exclude, generator=seeded())
    assert out.valid.all()
    for p in range(2):
        assert not set(out.item_ids[p].tolist()) & set(exclude[p])
        assert all(c == seqs[i] for c, i in zip(completions(out, p), out.item_ids[p].tolist()))
    assert set(out.item_ids[1].tolist()) <= set(range(len(seqs) - 3, len(seqs)))


def test_a_prompt_with_every_item_excluded_gets_empty_samples():
    model = tiny_model("llama", VOCAB)
    index = CatalogIndex.from_sequences(SMALL, vocab_size=VOCAB)
    ids, mask = prompts(3, seed=1)
    out = sample(model, index, ids, mask, num_samples=4, eos_token_id=EOS, pad_token_id=PAD,
                 exclude_items=[[], range(len(SMALL)), [1]], generator=seeded())
    assert out.valid.tolist() == [[True] * 4, [False] * 4, [True] * 4]
    assert out.lengths[1].tolist() == [0] * 4 and out.item_ids[1].tolist() == [-1] * 4
    assert (out.sequences[1] == PAD).all() and (out.token_logprobs[1] == 0).all()
    assert all(out.items(1, g) == [] for g in range(4))
    assert 1 not in out.item_ids[2].tolist()
    # nothing left anywhere
    empty = sample(model, index, ids[:1], mask[:1], num_samples=2, eos_token_id=EOS,
                   exclude_items=[range(len(SMALL))])
    assert not empty.valid.any() and (empty.lengths == 0).all()


# ----------------------------------------------------------------------- edges, errors
def test_max_new_tokens_cuts_long_samples_short():
    model = tiny_model("qwen2", VOCAB)
    index = CatalogIndex.from_sequences(SMALL, vocab_size=VOCAB)
    ids, mask = prompts(1, seed=3)
    out = sample(model, index, ids, mask, num_samples=200, temperature=3.0, max_new_tokens=2, eos_token_id=EOS,
                 generator=seeded())
    assert out.sequences.shape == (1, 200, 2)
    for g, tokens in enumerate(completions(out, 0)):
        if tokens[-1] == EOS:  # [10, EOS] ends within two tokens
            assert out.valid[0, g] and tokens == SMALL[out.item_ids[0, g]]
        else:  # cut short: tokens kept, no item
            assert not out.valid[0, g] and out.item_ids[0, g] == -1 and len(tokens) == 2
            assert any(s[:2] == tokens for s in SMALL)
    assert 0 < int(out.valid.sum()) < 200


def test_prompts_without_attention_mask_and_eos_from_the_model():
    model = tiny_model("llama", VOCAB)
    model.generation_config.eos_token_id = EOS
    index = CatalogIndex.from_sequences(SMALL, vocab_size=VOCAB)
    out = sample(model, index, torch.tensor([[3, 4, 5]]), num_samples=8, generator=seeded())
    assert all(c in SMALL for c in completions(out, 0))
    for g, tokens in enumerate(completions(out, 0)):  # padded with EOS by default
        assert (out.sequences[0, g, len(tokens):] == EOS).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(num_samples=0), "num_samples"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(exclude_items=[[0]]), "exclude_items has 1 entries for 2 prompts"),
])
def test_argument_errors_name_the_argument(kwargs, message):
    model = tiny_model("llama", VOCAB)
    index = CatalogIndex.from_sequences(SMALL, vocab_size=VOCAB)
    ids, mask = prompts(2, seed=1)
    with pytest.raises(ValueError, match=message):
        sample(model, index, ids, mask, **{"num_samples": 2, "eos_token_id": EOS, **kwargs})
    with pytest.raises(ValueError, match="input_ids must be"):
        sample(model, index, ids[0], eos_token_id=EOS)


# ------------------------------------------------------- the segment top-k / top-p op
@pytest.mark.parametrize("top_k, top_p", [(None, None), (1, None), (3, None), (None, 0.5), (None, 0.9),
                                          (4, 0.8), (50, 0.999), (None, 1.0)])
def test_filter_top_k_top_p_matches_hf_warpers_row_by_row(top_k, top_p):
    gen = torch.Generator().manual_seed(0)
    counts = torch.tensor([0, 1, 2, 7, 0, 30, 5, 1, 12])  # empty rows, single-token rows, wide rows
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    rows = torch.arange(counts.numel()).repeat_interleave(counts)
    scores = torch.randn(int(counts.sum()), generator=gen) * 3
    scores[offsets[6] + 1] = float("-inf")  # an excluded entry
    scores[offsets[7]] = float("-inf")  # a row with nothing left
    got = filter_top_k_top_p(scores, offsets, rows, top_k, top_p)
    warpers = ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p else [])
    for r in range(counts.numel()):
        row = scores[offsets[r]:offsets[r + 1]]
        if row.numel() == 0:
            continue
        want = torch.log_softmax(row, -1)[None]
        for warper in warpers:
            want = torch.log_softmax(warper(None, want), -1)
        if torch.isneginf(row).all():
            want = torch.full_like(want, float("-inf"))
        assert torch.allclose(got[offsets[r]:offsets[r + 1]], want[0], atol=1e-5, equal_nan=False), r


def test_triton_backend_samples_what_the_torch_backend_samples():
    """On the GPU too: a draw changes only if it falls within ~1e-6 of a CDF boundary."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        from rere.kernels.backend import interpreting
        if not interpreting():
            pytest.skip("Triton on the CPU needs TRITON_INTERPRET=1")
    model = tiny_model("qwen2", VOCAB, seed=51).to(KERNEL_DEVICE)
    index = CatalogIndex.from_sequences(catalog(60, seed=52), vocab_size=VOCAB)
    ids, mask = (t.to(KERNEL_DEVICE) for t in prompts(2, seed=53))
    runs = [sample(model, index, ids, mask, num_samples=6, temperature=1.5, top_p=0.95, eos_token_id=EOS,
                   generator=seeded(), backend=backend) for backend in ("torch", "triton")]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert torch.allclose(runs[0].token_logprobs, runs[1].token_logprobs, atol=1e-5)
    assert torch.allclose(runs[0].sampling_logprobs, runs[1].sampling_logprobs, atol=1e-5)


def test_draws_follow_each_rows_distribution_and_skip_impossible_entries():
    from rere.sampler.sampling import _draw, _row_argmax, _Uniforms

    counts = torch.tensor([3, 0, 1, 4, 2, 5])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    probs = torch.tensor([0.0, 0.3, 0.7,  # an impossible first entry
                          1.0,
                          0.1, 0.0, 0.4, 0.5,  # an impossible entry inside
                          0.0, 0.0,  # nothing possible: no draw
                          0.2, 0.2, 0.2, 0.4, 0.0])  # an impossible last entry
    logprobs = torch.log(probs)
    n = 20000
    entry, drawn = _draw(logprobs, offsets, n, _Uniforms(seeded(3), "cpu"))
    assert entry.shape == drawn.shape == (6 * n,)
    assert drawn.reshape(6, n).all(1).tolist() == [True, False, True, True, False, True]
    freq = torch.bincount(entry[drawn], minlength=probs.numel()).double() / n
    assert (freq[probs == 0] == 0).all()
    assert torch.allclose(freq, probs.double(), atol=0.015)
    assert _row_argmax(logprobs, offsets)[[0, 2, 3, 5]].tolist() == [2, 3, 7, 13]
