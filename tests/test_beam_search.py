"""rere.sampler.beam_search against Hugging Face generate with an exact prefix constraint."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from rere.index import CatalogIndex
from rere.sampler import beam_search
from rere.sampler.kv_cache import PromptDecoder, cache_keyword
from sampler_fixtures import EOS, PAD, VOCAB, PrefixDictProcessor, catalog, completion, prompts
from tiny_models import ARCHITECTURES, tiny_model

def hf_beams(model, seqs, ids, mask, beams, length_penalty, max_new):
    out = model.generate(ids, attention_mask=mask, num_beams=beams, num_return_sequences=beams,
                         length_penalty=length_penalty, max_new_tokens=max_new, do_sample=False,
                         early_stopping=False, eos_token_id=EOS, pad_token_id=PAD,
                         logits_processor=LogitsProcessorList([PrefixDictProcessor(seqs, ids.shape[1])]),
                         output_scores=True, return_dict_in_generate=True)
    completions = out.sequences[:, ids.shape[1]:].reshape(ids.shape[0], beams, -1)
    return completions, out.sequences_scores.reshape(ids.shape[0], beams)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("beams, length_penalty, n_items", [(4, 0.0, 60), (8, 0.0, 200), (6, 1.0, 120), (5, -0.5, 80)])
def test_matches_hf_generate(arch, beams, length_penalty, n_items):
    model = tiny_model(arch, VOCAB, seed=beams)
    seqs = catalog(n_items, seed=n_items)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(3, seed=beams)
    max_new = index.max_depth
    want_tokens, want_scores = hf_beams(model, seqs, ids, mask, beams, length_penalty, max_new)
    with torch.no_grad():
        got = beam_search(model, index, ids, mask, num_beams=beams, length_penalty=length_penalty, eos_token_id=EOS)
    item_of = {tuple(s): i for i, s in enumerate(seqs)}
    for p in range(ids.shape[0]):
        hf = [completion(t) for t in want_tokens[p].tolist()]
        ours = [tuple(got.sequences[p, g, :got.lengths[p, g]].tolist()) for g in range(beams)]
        assert ours == hf, f"prompt {p}"
        assert torch.allclose(got.scores[p], want_scores[p], atol=1e-4)
        assert got.item_ids[p].tolist() == [item_of[s] for s in ours]
        # per-token log-probs add up to the score (length_penalty divides the sum)
        summed = got.token_logprobs[p].sum(-1) / got.lengths[p].float() ** length_penalty
        assert torch.allclose(summed, got.scores[p], atol=1e-4)


def count_forwards(model) -> list:
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("share_prompt", [True, False], ids=["shared-prompt", "copied-prompt"])
@pytest.mark.parametrize("beams, length_penalty, max_new", [(6, 0.0, None), (8, 1.0, None), (5, 0.0, 10)])
def test_forced_replay_matches_hf_and_the_step_by_step_search(arch, share_prompt, beams, length_penalty, max_new):
    """Title-like catalogs (long sequences, unique a few tokens in): the replay finishes each
    prompt's search from one forward over the forced tails, with HF's results (a
    `max_new_tokens` shorter than the titles included) and fewer sequential model calls."""
    model = tiny_model(arch, VOCAB, seed=beams + 20)
    seqs = catalog(150, seed=beams + 20, max_len=16)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(3, seed=beams + 20)
    want_tokens, want_scores = hf_beams(model, seqs, ids, mask, beams, length_penalty, max_new or index.max_depth)
    calls = count_forwards(model)
    runs = {}
    for replay in (True, False):
        calls.clear()
        with torch.no_grad():
            runs[replay] = beam_search(model, index, ids, mask, num_beams=beams, length_penalty=length_penalty,
                                       max_new_tokens=max_new, eos_token_id=EOS, share_prompt=share_prompt,
                                       replay_forced=replay)
        runs[replay].model_calls = len(calls)
    got, plain = runs[True], runs[False]
    for p in range(ids.shape[0]):
        hf = [completion(t) for t in want_tokens[p].tolist()]
        assert [tuple(got.sequences[p, g, :got.lengths[p, g]].tolist()) for g in range(beams)] == hf, f"prompt {p}"
        assert torch.allclose(got.scores[p], want_scores[p], atol=1e-4)
    assert torch.equal(got.sequences, plain.sequences) and torch.equal(got.item_ids, plain.item_ids)
    assert torch.allclose(got.scores, plain.scores, atol=1e-5)
    assert torch.allclose(got.token_logprobs, plain.token_logprobs, atol=1e-5)
    assert got.model_calls < plain.model_calls


def test_fewer_items_than_beams():
    model = tiny_model("llama", VOCAB)
    seqs = [[5, 6, EOS], [5, 7, EOS], [9, EOS]]
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(2, seed=1)
    with torch.no_grad():
        got = beam_search(model, index, ids, mask, num_beams=5, eos_token_id=EOS)
    for p in range(2):
        assert sorted(got.item_ids[p, :3].tolist()) == [0, 1, 2]
        assert got.item_ids[p, 3:].tolist() == [-1, -1] and got.lengths[p, 3:].tolist() == [0, 0]
        assert torch.isneginf(got.scores[p, 3:]).all()


def test_duplicate_identifiers_name_every_item():
    model = tiny_model("qwen2", VOCAB)
    seqs = [[5, 6, EOS], [5, 6, EOS], [7, EOS]]
    index = CatalogIndex.from_sequences(seqs, [10, 11, 12], vocab_size=VOCAB)
    ids, mask = prompts(1, seed=2)
    with torch.no_grad():
        got = beam_search(model, index, ids, mask, num_beams=2, eos_token_id=EOS)
    named = {tuple(got.items(0, g)) for g in range(2)}
    assert named == {(10, 11), (12,)}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_excluded_items_never_appear_and_the_rest_is_hf_on_the_smaller_catalog(arch):
    model = tiny_model(arch, VOCAB, seed=3)
    seqs = catalog(150, seed=4)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(2, seed=5)
    with torch.no_grad():
        plain = beam_search(model, index, ids, mask, num_beams=6, eos_token_id=EOS)
    # Exclude each prompt's top 3 items: the search must return the next best ones, exactly
    # as HF would on a catalog without them.
    exclude = [plain.item_ids[p, :3].tolist() for p in range(2)]
    with torch.no_grad():
        got = beam_search(model, index, ids, mask, num_beams=6, eos_token_id=EOS, exclude_items=exclude)
    for p in range(2):
        assert not set(got.item_ids[p].tolist()) & set(exclude[p])
        kept = [s for i, s in enumerate(seqs) if i not in exclude[p]]
        want, want_scores = hf_beams(model, kept, ids[p:p + 1], mask[p:p + 1], 6, 0.0, index.max_depth)
        ours = [tuple(got.sequences[p, g, :got.lengths[p, g]].tolist()) for g in range(6)]
        assert ours == [completion(t) for t in want[0].tolist()]
        assert torch.allclose(got.scores[p], want_scores[0], atol=1e-4)


def test_exclude_items_errors():
    model = tiny_model("llama", VOCAB)
    index = CatalogIndex.from_sequences([[5, EOS], [6, EOS]], vocab_size=VOCAB)
    ids, mask = prompts(2, seed=1)
    with pytest.raises(ValueError, match="exclude_items has 1 entries for 2 prompts"):
        beam_search(model, index, ids, mask, num_beams=2, eos_token_id=EOS, exclude_items=[[0]])
    with pytest.raises(ValueError, match=r"exclude_items\[1\] names item 7, which is not in the index"):
        beam_search(model, index, ids, mask, num_beams=2, eos_token_id=EOS, exclude_items=[[0], [7]])


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("share_prompt", [True, False], ids=["shared-prompt", "copied-prompt"])
def test_kv_cache_reuse_gives_the_logits_of_a_full_recompute(arch, share_prompt, monkeypatch):
    """Prefill once, expand to beams, append tokens and reorder rows: every row's logits equal
    a from-scratch forward over its own (prompt + tokens), whether the beams share the
    prompt's keys and values (shared_prompt_attention) or each hold a copy."""
    from rere.sampler import shared_prompt_attention as spa

    calls = []
    attention = spa.shared_prompt_attention
    monkeypatch.setattr(spa, "shared_prompt_attention", lambda *a, **k: calls.append(1) or attention(*a, **k))
    spa.AttentionInterface.register(spa.NAME, spa.shared_prompt_attention)
    model = tiny_model(arch, VOCAB, seed=7)
    ids, mask = prompts(2, seed=8)
    beams, steps = 3, 5
    with torch.no_grad():
        decoder = PromptDecoder(model, ids, mask, 2 * steps, VOCAB, share_prompt=share_prompt)
        decoder.expand(beams)
        rows = [ids[r // beams][mask[r // beams].bool()].tolist() for r in range(2 * beams)]
        rng = np.random.default_rng(0)
        for step in range(steps):
            if step:
                parents = torch.tensor([p * beams + int(rng.integers(beams)) for p in range(2) for _ in range(beams)])
                decoder.reorder(parents)
                rows = [list(rows[int(parents[r])]) for r in range(len(rows))]
            width = 1 + step % 3  # one token per row, or a chunk of them (the forced-tail replay)
            tokens = torch.tensor(rng.integers(1, VOCAB, size=(2 * beams, width)))
            logits = decoder.step(tokens[:, 0])[:, None] if width == 1 else decoder.extend(tokens)
            for r in range(2 * beams):
                rows[r].extend(tokens[r].tolist())
                fresh = model(input_ids=torch.tensor([rows[r]])).logits[0, -width:]
                assert torch.allclose(logits[r], fresh, atol=1e-4), (step, r)
    spa.AttentionInterface.register(spa.NAME, attention)
    assert bool(calls) == share_prompt  # the shared path really ran (and only when asked)


class OldKeywordLM(torch.nn.Module):
    """A model whose forward takes its Cache as `past_key_values` (transformers 4.x, or a
    user's wrapper), around one that may take it as `cache` (transformers 5)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, logits_to_keep=logits_to_keep,
                          **{cache_keyword(self.inner): past_key_values})


@pytest.mark.parametrize("share_prompt", [True, False], ids=["shared-prompt", "copied-prompt"])
def test_the_cache_goes_under_the_name_the_models_forward_takes(share_prompt):
    """transformers 5 takes the cache as `cache` (`past_key_values` warns, and goes in 5.40);
    a forward that names only `past_key_values` still gets it there, with the same beams."""
    model = tiny_model("llama", VOCAB, seed=11)
    assert cache_keyword(OldKeywordLM(model)) == "past_key_values"
    index = CatalogIndex.from_sequences(catalog(50, seed=12), vocab_size=VOCAB)
    ids, mask = prompts(2, seed=13)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        new = beam_search(model, index, ids, mask, num_beams=4, eos_token_id=EOS, share_prompt=share_prompt)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    with torch.no_grad():
        old = beam_search(OldKeywordLM(model), index, ids, mask, num_beams=4, eos_token_id=EOS,
                          share_prompt=share_prompt)
    assert torch.equal(new.sequences, old.sequences)
    torch.testing.assert_close(new.scores, old.scores)


def test_never_checking_for_the_end_changes_nothing():
    """stop_check_every=0 (the sync-free mode for GPUs) runs every step; results are equal."""
    model = tiny_model("llama", VOCAB, seed=9)
    index = CatalogIndex.from_sequences(catalog(80, seed=9), vocab_size=VOCAB)
    ids, mask = prompts(2, seed=9)
    with torch.no_grad():
        a = beam_search(model, index, ids, mask, num_beams=4, eos_token_id=EOS, replay_forced=False)
        b = beam_search(model, index, ids, mask, num_beams=4, eos_token_id=EOS, stop_check_every=0)
    for field in ("sequences", "lengths", "item_ids"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert torch.equal(a.scores, b.scores)


@pytest.mark.gpu
def test_decode_loop_is_sync_free_on_gpu(monkeypatch):
    """With stop_check_every=0 nothing in rere's part of the decode loop synchronises with
    the host. The model's own forward and the final item lookup (after the loop) are
    excluded from the check."""
    import rere.sampler.beam_search as bs

    def unchecked(fn):
        def call(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("default")
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        return call

    model = tiny_model("qwen2", VOCAB, seed=1).cuda()
    model.forward = unchecked(model.forward)
    monkeypatch.setattr(bs._Search, "output", unchecked(bs._Search.output))
    index = CatalogIndex.from_sequences(catalog(100, seed=1), vocab_size=VOCAB)
    index.to("cuda")  # copy the trie once, outside the check
    ids, mask = prompts(2, seed=1)
    ids, mask = ids.cuda(), mask.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            out = beam_search(model, index, ids, mask, num_beams=4, eos_token_id=EOS, stop_check_every=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.valid.all()


def test_under_autocast_shared_prompt_attention_matches_the_models_own_attention():
    """A trainer's bf16 autocast forward attends with sdpa; under autocast the shared-prompt
    path must give the same log-probs (it falls back to sdpa over the expanded prompt)."""
    model = tiny_model("llama", VOCAB, seed=12)
    index = CatalogIndex.from_sequences(catalog(60, seed=12), vocab_size=VOCAB)
    ids, mask = prompts(2, seed=12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [beam_search(model, index, ids, mask, num_beams=4, eos_token_id=EOS, share_prompt=share)
                for share in (True, False)]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert torch.allclose(outs[0].token_logprobs, outs[1].token_logprobs, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bf16_models(arch):
    """A bf16 model decodes to distinct catalog items, best first, with log-probs (computed
    in fp32 from bf16 logits) that add up to the scores."""
    model = tiny_model(arch, VOCAB, seed=13, dtype=torch.bfloat16)
    seqs = catalog(100, seed=13)
    index = CatalogIndex.from_sequences(seqs, vocab_size=VOCAB)
    ids, mask = prompts(2, seed=13)
    with torch.no_grad():
        out = beam_search(model, index, ids, mask, num_beams=5, eos_token_id=EOS)
    assert out.valid.all() and out.scores.dtype == torch.float32
    for p in range(2):
        assert len(set(out.item_ids[p].tolist())) == 5
        for g in range(5):
            assert out.sequences[p, g, :out.lengths[p, g]].tolist() == seqs[int(out.item_ids[p, g])]
        assert torch.all(out.scores[p, :-1] >= out.scores[p, 1:])
    assert torch.allclose(out.token_logprobs.sum(-1), out.scores, atol=1e-4)
