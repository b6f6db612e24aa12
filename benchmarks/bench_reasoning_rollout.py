"""RPORec's reasoning rollout: G samples per prompt with each prompt prefilled once
(`rere.sampler.text_sampling.sample_text`, what stages 1 and 2 use) against HF `generate`
with `num_return_sequences=G` (what they used before: each prompt repeated G times, then
prefilled and decoded with G copies of its keys and values).

    pytest benchmarks/bench_reasoning_rollout.py --benchmark-enable --benchmark-columns=min,median,max

SmolLM2-135M's shape with random weights (30 layers, hidden 576, 9 / 3 heads, 49,152-token
vocabulary), P = 2 prompts of 400 tokens, G = 8 samples, 64 new tokens each, temperature 1,
top-p 0.95 (Stage2Config's sampling). No EOS and no stop string, so that both sides decode
every token: the same work, two layouts. "tokens_per_s" (extra_info) counts generated tokens.
"""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rere.sampler.text_sampling import sample_text

P, PROMPT, G, NEW, VOCAB = 2, 400, 8, 64, 49_152
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, max_position_embeddings=1024, **SMOLLM2)).eval()
    ids = torch.randint(1, VOCAB, (P, PROMPT))
    return model, ids, torch.ones_like(ids)


def hf_generate(model, ids, mask):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, do_sample=True, top_p=0.95, top_k=0, temperature=1.0,
                              num_return_sequences=G, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0,
                              eos_token_id=None)


def prefill_once(model, ids, mask):
    return sample_text(model, ids, mask, num_samples=G, max_new_tokens=NEW, top_p=0.95, pad_token_id=0)


@pytest.mark.parametrize("sampler", ["hf-generate", "prefill-once"])
def test_reasoning_rollout(benchmark, case, sampler):
    model, ids, mask = case
    run = {"hf-generate": hf_generate, "prefill-once": prefill_once}[sampler]
    benchmark.pedantic(run, args=(model, ids, mask), rounds=3, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = P * G * NEW / benchmark.stats["median"]
