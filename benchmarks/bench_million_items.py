"""A run end to end at 10k, 100k and 1M items: prepare, SFT steps, ReRe GRPO steps,
evaluation, with one small model; step times and memory per catalog size.

    pytest benchmarks/bench_million_items.py --benchmark-enable -s

Each size runs in a fresh child process (`--measure N`), so that its memory is its own:

- data: `rere.synthetic.titled_dataset(N)` (titles "<brand> <noun> <model number>", ~9
  Qwen2 tokens each; users follow one brand through its model numbers, 2,000 training users
  at every size), saved as a prepared folder and loaded back;
- model: a 2-layer, 64-wide Llama over Qwen2's 151,936-token vocabulary (random weights;
  the speed of a step does not depend on them);
- SFT: 6 steps of 8 sequences (`train_sft`); ReRe: 4 GRPO steps of 8 prompts x 8 beams
  (`GRPOTrainer`: constrained beam-search rollouts over the whole catalog, then the update);
  evaluation: 32 test rows, 20 beams (`rere.evaluation.evaluate`, the index given);
- per step: the median of the steps after the first (`s_per_step` of SFT; `rollout_s` +
  `update_s` of GRPO) and seconds per evaluated row; setup: what each trainer spends before
  its first step. The catalog cache starts empty: SFT tokenises the catalog and builds the
  index (`rere.index.catalog_cache`), GRPO and evaluation memory-map them ("index": the
  cached call alone);
- memory: resident MB after each stage and the peak (`VmHWM`) within it.

Target (issue 17): a step at 1M items within 1.3x of one at 10k; memory growing only by
the index and the item-side tensors.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}


@pytest.mark.parametrize("size", list(SIZES))
def test_scale(benchmark, size):
    if benchmark.disabled:
        pytest.skip("minutes per size: run with --benchmark-enable")
    result = {}

    def run():
        done = subprocess.run([sys.executable, __file__, "--measure", str(SIZES[size])], capture_output=True,
                              text=True, check=True)
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1)
    benchmark.extra_info.update(result)
    print(f"\n{size}: {json.dumps(result)}")


def measure(n_items: int) -> dict:
    import torch

    from rere.data import Dataset
    from rere.evaluation import evaluate
    from rere.index.catalog_cache import cached_catalog
    from rere.prompts import Prompter
    from rere.synthetic import titled_dataset
    from rere.tokenizers import load_tokenizer
    from rere.trainer.grpo import GRPOConfig, GRPOTrainer
    from rere.trainer.metrics_log import read_metrics
    from rere.trainer.sft import SFTConfig, train_sft
    from transformers import LlamaConfig, LlamaForCausalLM

    out, memory, seconds = Path(tempfile.mkdtemp()), {}, {}
    os.environ["RERE_CACHE"] = str(out / "cache")  # cold: SFT tokenises the catalog, GRPO and evaluation map it

    def stage(name: str, call):
        _reset_peak()
        started = time.perf_counter()
        value = call()
        seconds[name] = round(time.perf_counter() - started, 2)
        memory[name] = {"rss_mb": _status_mb("VmRSS"), "peak_mb": _status_mb("VmHWM")}
        return value

    tokenizer = load_tokenizer("qwen2")
    memory["start"] = {"rss_mb": _status_mb("VmRSS")}
    dataset = stage("prepare", lambda: (titled_dataset(n_items).save(out / "data"), Dataset.load(out / "data"))[1])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=151_936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).train()
    sft = SFTConfig(max_steps=6, batch_size=8, eval_examples=0, save_every=1_000, device="cpu")
    stage("sft", lambda: train_sft(model, tokenizer, dataset, sft, out / "sft", progress=False))
    grpo = GRPOConfig(max_steps=4, num_generations=8, prompts_per_step=8, rollout_batch=8, micro_batch=4,
                      eval_examples=0, save_every=1_000, device="cpu")
    stage("grpo", lambda: GRPOTrainer(model, tokenizer, dataset, grpo, out / "grpo", progress=False).run())
    prompter = Prompter(dataset.catalog, dataset.category, tokenizer=tokenizer)
    index = stage("index", lambda: cached_catalog(dataset.catalog, tokenizer, template=prompter.completion_format,
                                                  context=prompter.template.context, vocab_size=151_936).index)
    model.eval()
    stage("evaluate", lambda: evaluate(model, tokenizer, dataset, out / "eval", num_beams=20, batch_size=8,
                                       index=index, limit=32, progress=False))

    sft_rows = [r for r in read_metrics(out / "sft" / "metrics.jsonl") if r["split"] == "train"]
    grpo_rows = [r for r in read_metrics(out / "grpo" / "metrics.jsonl") if r["split"] == "train"]
    sft_step = statistics.median(r["s_per_step"] for r in sft_rows[1:])
    grpo_step = statistics.median(r["rollout_s"] + r["update_s"] for r in grpo_rows[1:])
    return {
        "items": n_items, "index_mb": round(index.stats()["bytes"] / 1e6, 1),
        "sft_s_per_step": round(sft_step, 3),
        "sft_setup_s": round(seconds["sft"] - sum(r["s_per_step"] for r in sft_rows), 2),
        "grpo_s_per_step": round(grpo_step, 3),
        "grpo_rollout_s": round(statistics.median(r["rollout_s"] for r in grpo_rows[1:]), 3),
        "grpo_update_s": round(statistics.median(r["update_s"] for r in grpo_rows[1:]), 3),
        "grpo_setup_s": round(seconds["grpo"] - sum(r["rollout_s"] + r["update_s"] for r in grpo_rows), 2),
        "eval_s_per_row": round(seconds["evaluate"] / 32, 3),
        "index_build_s": seconds["index"], "prepare_s": seconds["prepare"], "memory": memory,
    }


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS (see peak_memory.py)
        f.write("5")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return round(next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024, 1)


if __name__ == "__main__" and sys.argv[1:2] == ["--measure"]:
    print(json.dumps(measure(int(sys.argv[2]))))
