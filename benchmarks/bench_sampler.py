"""Constrained beam search end to end, against HF `generate` + the per-beam dict processor.

    pytest benchmarks/bench_sampler.py --benchmark-enable --benchmark-columns=min,median,max

- `test_end_to_end_*`: SmolLM2-135M (the offline asset, `rere.models.load_smollm2`; else a
  small random Qwen2 with the offline Qwen2 tokenizer), Amazon Industrial test prompts with
  their full 10-item histories (from ../shared/data), 16 beams, the catalog of 3,686 titles.
  The two must return identical beams (checked once).
- `test_end_to_end_rere_without_forced_replay`: the same, decoding the forced title tails
  step by step (`replay_forced=False`), to show what the replay buys.
- `test_step_overhead`: everything but the model forward, per decode step, for synthetic
  catalogs of 10k, 100k and 1M items (a tiny model, 4 prompts x 16 beams).
"""
from __future__ import annotations

import ast
import csv
import time
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessorList

from rere.catalog import Catalog
from rere.index import CatalogIndex
from rere.sampler import beam_search
from rere.synthetic import title_like_catalog

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-industrial-rere"
BEAMS = 16
N_PROMPTS = 2


class PrefixDictProcessor:
    """The reference implementation's constraint: '-'-joined prefix -> allowed next tokens,
    one dict lookup per beam per step, applied as a -inf mask."""

    def __init__(self, seqs, prompt_len):
        self.table, self.prompt_len = {}, prompt_len
        for seq in seqs:
            for d in range(len(seq)):
                self.table.setdefault("-".join(map(str, seq[:d])), set()).add(seq[d])

    def __call__(self, input_ids, scores):
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            mask[row, sorted(self.table.get("-".join(map(str, ids)), ()))] = 0.0
        return scores + mask


def load_model():
    from rere.models import load_smollm2, smollm2_gguf_path

    if smollm2_gguf_path() is not None:
        model, tokenizer = load_smollm2()
        return model, tokenizer, "SmolLM2-135M-Instruct"
    from rere.tokenizers import qwen2_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151_936, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)
    return Qwen2ForCausalLM(config).eval(), qwen2_tokenizer(), "random Qwen2 (4 layers, 256 wide)"


def history_prompts(n: int) -> list[str]:
    """ReRe-style prompts from the first test rows with 10-item histories (the prompt
    builder of rere.prompts will replace this inline template)."""
    prompts = []
    with open(SHARED / "test.csv", newline="") as f:
        for row in csv.DictReader(f):
            titles = ast.literal_eval(row["history_item_title"])
            if len(titles) == 10:
                history = "\t".join(f'"{t}"' for t in titles)
                prompts.append(
                    "Below is an instruction that describes a task, paired with an input that provides further "
                    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                    "Given a list of industrial and scientific products the user has bought before, please "
                    f"recommend a new product that the user likes.\n\n### Input:\n{history}\n\n### Response:\n")
            if len(prompts) == n:
                return prompts
    return prompts


def amazon_case():
    """(model, tokenizer, model name, catalog token sequences, index) for the shared Amazon
    catalog; skips the benchmark where the shared data is absent."""
    if not (SHARED / "info.txt").exists():
        pytest.skip(f"real data not found at {SHARED}: put ../shared/data beside the checkout")
    model, tokenizer, name = load_model()
    catalog = Catalog.from_tsv(SHARED / "info.txt")
    tokenized = catalog.tokenize(tokenizer)
    seqs = [tokenized.sequence(i).tolist() for i in range(len(catalog))]
    index = CatalogIndex.from_catalog(catalog, tokenizer, vocab_size=model.config.vocab_size)
    return model, tokenizer, name, seqs, index


@pytest.fixture(scope="module")
def amazon_setup():
    model, tokenizer, name, seqs, index = amazon_case()
    tokenizer.padding_side = "left"
    batch = tokenizer(history_prompts(N_PROMPTS), return_tensors="pt", padding=True)
    return model, tokenizer, name, seqs, index, batch


def run_rere(model, index, batch, eos, replay_forced=True):
    with torch.no_grad():
        return beam_search(model, index, batch.input_ids, batch.attention_mask, num_beams=BEAMS, eos_token_id=eos,
                           replay_forced=replay_forced)


def run_hf(model, seqs, index, batch, eos):
    with torch.no_grad():
        return model.generate(batch.input_ids, attention_mask=batch.attention_mask, num_beams=BEAMS,
                              num_return_sequences=BEAMS, max_new_tokens=index.max_depth, length_penalty=0.0,
                              do_sample=False, early_stopping=False, eos_token_id=eos, pad_token_id=eos,
                              logits_processor=LogitsProcessorList([PrefixDictProcessor(seqs, batch.input_ids.shape[1])]),
                              output_scores=True, return_dict_in_generate=True)


def test_end_to_end_rere(benchmark, amazon_setup):
    model, tokenizer, name, seqs, index, batch = amazon_setup
    out = benchmark.pedantic(run_rere, args=(model, index, batch, tokenizer.eos_token_id), rounds=2, warmup_rounds=0)
    assert out.valid.all()
    benchmark.extra_info.update(model=name, prompts=N_PROMPTS, beams=BEAMS,
                                prompt_tokens=batch.attention_mask.sum(1).tolist())


def test_end_to_end_rere_without_forced_replay(benchmark, amazon_setup):
    """The same search decoding every forced title tail one step at a time: what the replay buys."""
    model, tokenizer, name, seqs, index, batch = amazon_setup
    eos = tokenizer.eos_token_id
    out = benchmark.pedantic(run_rere, args=(model, index, batch, eos, False), rounds=2, warmup_rounds=0)
    replayed = run_rere(model, index, batch, eos)
    assert torch.equal(out.sequences, replayed.sequences)
    assert torch.allclose(out.scores, replayed.scores, atol=1e-5)
    benchmark.extra_info.update(model=name, prompts=N_PROMPTS, beams=BEAMS)


def test_end_to_end_hf_generate_dict_processor(benchmark, amazon_setup):
    model, tokenizer, name, seqs, index, batch = amazon_setup
    eos = tokenizer.eos_token_id
    hf = benchmark.pedantic(run_hf, args=(model, seqs, index, batch, eos), rounds=1, warmup_rounds=0)
    ours = run_rere(model, index, batch, eos)
    width = batch.input_ids.shape[1]
    hf_tokens = hf.sequences[:, width:].reshape(N_PROMPTS, BEAMS, -1).tolist()
    for p in range(N_PROMPTS):
        for g in range(BEAMS):
            t = hf_tokens[p][g]
            t = t[:t.index(eos) + 1] if eos in t else t
            assert ours.sequences[p, g, :ours.lengths[p, g]].tolist() == t, (p, g)
    assert torch.allclose(ours.scores.reshape(-1), hf.sequences_scores, atol=1e-3)
    benchmark.extra_info.update(model=name, prompts=N_PROMPTS, beams=BEAMS, identical_beams=True)


class TimedModel(torch.nn.Module):
    """Wraps a model and adds up the seconds spent in its forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.seconds, self.calls = model, model.config, 0.0, 0

    def forward(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.model(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


@pytest.mark.parametrize("n_items", [10_000, 100_000, 1_000_000], ids=["10k", "100k", "1M"])
def test_step_overhead(benchmark, n_items):
    tokens, offsets = title_like_catalog(n_items)
    index = CatalogIndex.from_flat(tokens, offsets, vocab_size=151_936)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=151_936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()
    timed = TimedModel(tiny)
    ids = torch.randint(0, 151_000, (4, 64), generator=torch.Generator().manual_seed(0))

    def run():
        timed.seconds, timed.calls = 0.0, 0
        start = time.perf_counter()
        with torch.no_grad():
            beam_search(timed, index, ids, num_beams=BEAMS, eos_token_id=151_643)
        return time.perf_counter() - start

    total = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    overhead = total - timed.seconds
    benchmark.extra_info.update(items=n_items, steps=timed.calls, forward_s=timed.seconds, overhead_s=overhead,
                                overhead_per_step_ms=1e3 * overhead / max(timed.calls, 1))
