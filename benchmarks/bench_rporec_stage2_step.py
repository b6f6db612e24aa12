"""One RPORec stage-2 step (rollout, the head's rewards, the update) with the reasonings
sampled by `sample_text` (each prompt prefilled once) against the same step with HF
`generate(num_return_sequences=G)`, what stage 2 used before.

    pytest benchmarks/bench_rporec_stage2_step.py --benchmark-enable --benchmark-columns=min,median,max

SmolLM2-135M's decoder shape (30 layers, hidden 576, 9 / 3 heads) with random weights over
Qwen2's tokenizer (151,936 logits: an LM head ~3x SmolLM2's), a RecHead with random item
encodings over `titled_dataset(1,000)`; Stage2Config's sampling (temperature 1, top-p 1)
with 2 prompts x G = 8 reasonings of 64 tokens (random weights never write `</answer>` or
EOS, so every reasoning is 64 tokens on both sides), no reference model (beta 0), every
reasoning rewarded (format_check off). `rollout_s` and `update_s` of the last round go to
extra_info.
"""
from __future__ import annotations

import copy
import tempfile

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rere.rporec import reasoning, stage2
from rere.rporec.config import Stage2Config
from rere.rporec.encoding import model_fingerprint, pad_id
from rere.rporec.rec_head import RecHead, RecHeadConfig
from rere.sampler import left_pad
from rere.synthetic import titled_dataset
from rere.tokenizers import load_tokenizer

G, NEW = 8, 64
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, tie_word_embeddings=True)


def hf_generate_reasonings(model, tokenizer, prompts, *, num_samples=1, max_new_tokens=128, do_sample=True,
                           temperature=0.7, top_p=1.0, generator_seed=None):
    """The reference: stage 2's rollout before `sample_text`, HF generate with G copies."""
    ids, mask = left_pad(prompts, pad_id(tokenizer))
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        out = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             num_return_sequences=num_samples, stop_strings=[reasoning.ANSWER_CLOSE],
                             tokenizer=tokenizer, pad_token_id=pad_id(tokenizer),
                             eos_token_id=tokenizer.eos_token_id, do_sample=True, temperature=temperature,
                             top_p=top_p, top_k=0)
    model.train()
    rows = [reasoning._cut(tokenizer, row, tokenizer.eos_token_id) for row in out[:, ids.shape[1]:].tolist()]
    return [rows[p * num_samples:(p + 1) * num_samples] for p in range(len(prompts))]


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    tokenizer = load_tokenizer("qwen2")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=151_936, max_position_embeddings=2048, **SMOLLM2))
    dataset = titled_dataset(1_000, n_users=64)
    head = RecHead(RecHeadConfig(hidden_size=576, num_items=1_000), torch.randn(1_000, 576),
                   provenance={"encoder": model_fingerprint(model)})
    return tokenizer, model, dataset, head


@pytest.mark.parametrize("sampler", ["hf-generate", "prefill-once"])
def test_stage2_step(benchmark, world, sampler, monkeypatch):
    if benchmark.disabled:
        pytest.skip("~1 min a round on a CPU: run with --benchmark-enable")
    tokenizer, model, dataset, head = world
    if sampler == "hf-generate":
        monkeypatch.setattr(stage2, "generate_reasonings", hf_generate_reasonings)
    config = Stage2Config(num_generations=G, rollout_batch=2, prompts_per_step=2, max_new_tokens=NEW, beta=0.0,
                          format_check=False, top_p=1.0, micro_batch=2, max_steps=100, eval_examples=0,
                          device="cpu")
    trainer = stage2.Stage2Trainer(copy.deepcopy(model), tokenizer, dataset, head, config, tempfile.mkdtemp(), progress=False)
    metrics = benchmark.pedantic(trainer.step, rounds=2, warmup_rounds=1)
    benchmark.extra_info.update(rollout_s=round(metrics["rollout_s"], 2), update_s=round(metrics["update_s"], 2))
