"""The GRPO update with each prompt run once per group, against one row per completion.

    pytest benchmarks/bench_packed_update.py --benchmark-enable

One group as in ReRe: a 400-token prompt, G = 16 completions of 30 tokens, on two models
with random weights and SmolLM2's 49,152-token vocabulary:

- "smollm2-135m": SmolLM2-135M's shape (30 layers, hidden 576, 9 heads / 3 KV heads, tied
  head), what the demo trains; a per-sequence round takes ~40 s on 2 CPU cores;
- "toy": 4 layers, hidden 256, a round in seconds. Its LM head (12.6M parameters) is 3.7x
  its decoder (3.4M), where real LLMs' heads are a fraction of the decoder (SmolLM2-135M:
  28M vs 106M; Qwen2-0.5B: 136M vs 358M). The head scores the same 480 completion tokens in
  both layouts, so it caps the toy's gain well below the 7.9x fewer tokens packing runs.

Both sides do the same work per completion token:
forward, log-probs of the completion tokens only (the fused linear log-softmax, no
[tokens, V] logits), the GRPO loss and the backward. They differ in the layout:

- "packed": `pack_groups` (prompt once + 16 x 29 completion inputs = 864 tokens);
- "per-sequence": `pack_groups(share_prompt=False)`: 16 rows of 429 tokens (6,864), what
  TRL's GRPOTrainer feeds the model.

tokens/s counts completion tokens scored per second (extra_info). Peak extra memory of one
update is measured in a child process (peak_memory.py) when benchmarking.
"""
from __future__ import annotations

import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from peak_memory import measure_in_child, peak_extra_mb, report
from rere.trainer.grpo_loss import grpo_loss
from rere.trainer.packed_logprobs import CompletionScorer, pack_groups

PROMPT, COMPLETION, G, VOCAB = 400, 30, 16, 49_152
MODELS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, tie_word_embeddings=True),
    "toy": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4),
}
ROUNDS = {"smollm2-135m": 2, "toy": 3}


def make_case(model_name: str, share_prompt: bool):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=1024, **MODELS[model_name])
    model = LlamaForCausalLM(config).train()
    prompt = torch.randint(0, VOCAB, (PROMPT,))
    completions = torch.randint(0, VOCAB, (1, G, COMPLETION))
    lengths = torch.full((1, G), COMPLETION)
    batch = pack_groups([prompt], completions, lengths, share_prompt=share_prompt)
    advantages = torch.randn(G)
    return CompletionScorer(model), batch, advantages


def update(scorer, batch, advantages):
    scorer.zero_grad(set_to_none=True)
    logprobs = scorer(batch)
    loss = grpo_loss(logprobs, batch.sequence, advantages, beta=0.0).loss
    loss.backward()
    return loss


@pytest.mark.parametrize("layout", ["packed", "per-sequence"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_grpo_update(benchmark, model_name, layout):
    benchmark.group = f"GRPO update, {model_name}: prompt {PROMPT}, G={G} x {COMPLETION} tokens"
    if benchmark.disabled and model_name != "toy":
        pytest.skip("a round takes ~40 s on a CPU: run with --benchmark-enable")
    scorer, batch, advantages = make_case(model_name, layout == "packed")
    loss = benchmark.pedantic(update, args=(scorer, batch, advantages), rounds=ROUNDS[model_name], warmup_rounds=1)
    assert torch.isfinite(loss)
    tokens = G * COMPLETION
    benchmark.extra_info.update(model_tokens=batch.input_ids.numel(), completion_tokens=tokens)
    if not benchmark.disabled:
        benchmark.extra_info.update(tokens_per_s=round(tokens / benchmark.stats.stats.mean, 1),
                                    peak_extra_mb=round(measure_in_child(__file__, model_name, layout), 1))


def _child(model_name: str, layout: str) -> None:
    scorer, batch, advantages = make_case(model_name, layout == "packed")
    update(scorer, pack_groups([torch.arange(1, 5)], torch.ones(1, 2, 3, dtype=torch.int64),
                               torch.full((1, 2), 3)), torch.zeros(2))  # warm up autograd and thread pools
    report(peak_extra_mb(lambda: update(scorer, batch, advantages)))


if __name__ == "__main__" and sys.argv[1:2] == ["--measure"]:
    _child(sys.argv[2], sys.argv[3])
