"""`sample_text`: free-text sampling with each prompt prefilled once, against a plain forward
and HF `generate`."""
from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from rere.sampler import left_pad
from rere.sampler.text_sampling import sample_text
from tiny_models import ARCHITECTURES, tiny_model

VOCAB, EOS, PAD = 97, 3, 0
PROMPTS = [[5, 9, 14, 22, 30, 41], [7, 8], [60, 61, 62, 63]]  # different lengths: left padding


def reference_logprobs(model, prompt: list[int], completion: list[int], warpers) -> torch.Tensor:
    """Log-prob of each completion token under HF's warped distribution, from one forward
    over prompt + completion (no cache, no padding)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    out = []
    for t, token in enumerate(completion):
        scores = warpers(ids[:, :len(prompt) + t], logits[t:t + 1].clone())
        out.append(torch.log_softmax(scores, -1)[0, token])
    return torch.stack(out)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, None, 0.9), (1.3, 20, 0.8)])
def test_each_token_has_the_probability_hf_gives_it_after_the_same_prefix(arch, temperature, top_k, top_p):
    model = tiny_model(arch, VOCAB, seed=1)
    ids, mask = left_pad(PROMPTS, PAD)
    out = sample_text(model, ids, mask, num_samples=4, max_new_tokens=12, temperature=temperature, top_k=top_k,
                      top_p=top_p, eos_token_id=EOS, pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
                                  + ([TopPLogitsWarper(top_p)] if top_p else []))
    rows = out.rows()
    for p, prompt in enumerate(PROMPTS):
        assert len(rows[p]) == 4 and len({tuple(r) for r in rows[p]}) > 1  # independent draws
        for g, completion in enumerate(rows[p]):
            expected = reference_logprobs(model, prompt, completion, warpers)
            assert torch.isfinite(expected).all()  # every token was inside top-k / top-p
            torch.testing.assert_close(out.logprobs[p, g, :len(completion)], expected, atol=1e-4, rtol=1e-4)
            ends_at_eos = completion[-1] == EOS
            assert ends_at_eos or len(completion) == 12
            assert EOS not in completion[:-1] and bool((out.sequences[p, g, len(completion):] == PAD).all())


def test_greedy_is_generates_greedy_and_a_seed_repeats_the_draws():
    model = tiny_model("llama", VOCAB, seed=2)
    ids, mask = left_pad(PROMPTS, PAD)
    greedy = sample_text(model, ids, mask, do_sample=False, max_new_tokens=10, pad_token_id=PAD)
    with torch.no_grad():
        hf = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=10, pad_token_id=PAD,
                            eos_token_id=None, num_beams=1)
    assert [r[0] for r in greedy.rows()] == hf[:, ids.shape[1]:].tolist()
    first, second = (sample_text(model, ids, mask, num_samples=3, max_new_tokens=8, pad_token_id=PAD,
                                 generator=torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(first.sequences, second.sequences)


def test_the_first_tokens_of_a_prompts_samples_follow_its_distribution():
    """The G rows of a prompt are drawn from its one prefilled row: their first tokens are
    multinomial draws from its softmax (a chi-square test over 4,000 draws)."""
    model = tiny_model("llama", VOCAB, seed=3)
    ids, mask = left_pad(PROMPTS[:1], PAD)
    out = sample_text(model, ids, mask, num_samples=4000, max_new_tokens=1, temperature=2.0, pad_token_id=PAD,
                      generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1].float() / 2.0, -1)
    counts = torch.bincount(out.sequences[0, :, 0], minlength=VOCAB).double()
    expected = probs.double() * 4000
    kept = expected >= 5
    chi2 = float((((counts - expected) ** 2 / expected)[kept]).sum() + (counts[~kept].sum() - expected[~kept].sum()) ** 2
                 / max(float(expected[~kept].sum()), 1e-9))
    assert chi2 < 2 * int(kept.sum()) + 30  # mean ~ degrees of freedom; a wrong distribution lands far above


def test_bad_arguments_are_named():
    model = tiny_model("llama", VOCAB)
    ids, mask = left_pad(PROMPTS, PAD)
    with pytest.raises(ValueError, match="num_samples and max_new_tokens"):
        sample_text(model, ids, mask, num_samples=0)
    with pytest.raises(ValueError, match="stop_strings need the tokenizer"):
        sample_text(model, ids, mask, stop_strings=("</answer>",))
