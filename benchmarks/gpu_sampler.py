"""GPU benchmark of constrained beam search (needs CUDA; not part of pytest).

    python benchmarks/gpu_sampler.py [--prompts 64] [--beams 16] [--items 1000000] [--json out.json]

A randomly initialised Qwen2-0.5B-shaped model (bf16; the weights do not matter for speed),
prompts of 400 random tokens, a synthetic title-like catalog. Reports the time of
`rere.sampler.beam_search`, the time spent in the model's forward (CUDA events around each
call, no extra synchronisation), and the per-step overhead as a share of the forward
(target: <= 10% at 64 prompts x 16 beams); then HF `generate` with rere's
`TrieLogitsProcessor` on the same inputs, for comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

from rere.index import CatalogIndex
from rere.sampler import beam_search
from rere.sampler.hf import TrieLogitsProcessor
from rere.synthetic import QWEN2_EOS, title_like_catalog

QWEN2_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096)


class EventTimedModel(torch.nn.Module):
    """Records CUDA events around every forward; `seconds()` adds them up at the end."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.events = model, model.config, []

    def forward(self, *args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = self.model(*args, **kwargs)
        end.record()
        self.events.append((start, end))
        return out

    def seconds(self) -> float:
        torch.cuda.synchronize()
        return sum(s.elapsed_time(e) for s, e in self.events) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--beams", type=int, default=16)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--skip-hf", action="store_true", help="do not time HF generate")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_sampler.py needs a CUDA GPU")

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B)).to("cuda", torch.bfloat16).eval()
    tokens, offsets = title_like_catalog(args.items)
    index = CatalogIndex.from_flat(tokens, offsets, vocab_size=QWEN2_05B["vocab_size"])
    index.to("cuda")
    ids = torch.randint(0, 150_000, (args.prompts, args.prompt_tokens), device="cuda")
    timed = EventTimedModel(model)
    with torch.no_grad():
        beam_search(timed, index, ids[:2], num_beams=args.beams, eos_token_id=QWEN2_EOS)  # warm-up
        timed.events.clear()
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = beam_search(timed, index, ids, num_beams=args.beams, eos_token_id=QWEN2_EOS)
        torch.cuda.synchronize()
        total = time.perf_counter() - start
    forward = timed.seconds()
    steps = len(timed.events) - 1
    result = {"device": torch.cuda.get_device_name(), "prompts": args.prompts, "beams": args.beams,
              "items": args.items, "total_s": total, "forward_s": forward, "steps": steps,
              "overhead_share": (total - forward) / forward, "valid": int(out.valid.sum())}
    print(f"{result['device']}: {args.prompts} prompts x {args.beams} beams, {args.items:,} items: "
          f"{total:.2f} s, forward {forward:.2f} s over {steps} steps + prefill, "
          f"overhead {100 * result['overhead_share']:.1f}% of the forward")
    with torch.no_grad():  # what the forced-continuation replay buys, in the same run
        torch.cuda.synchronize()
        start = time.perf_counter()
        beam_search(model, index, ids, num_beams=args.beams, eos_token_id=QWEN2_EOS, replay_forced=False)
        torch.cuda.synchronize()
    result["without_replay_s"] = time.perf_counter() - start
    print(f"without the forced-continuation replay: {result['without_replay_s']:.2f} s "
          f"({result['without_replay_s'] / total:.2f}x the time with it)")
    if not args.skip_hf:
        with torch.no_grad():
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(ids, num_beams=args.beams, num_return_sequences=args.beams, length_penalty=0.0,
                           max_new_tokens=index.max_depth, do_sample=False, early_stopping=False,
                           eos_token_id=QWEN2_EOS, pad_token_id=QWEN2_EOS,
                           logits_processor=LogitsProcessorList([TrieLogitsProcessor(index)]))
            torch.cuda.synchronize()
        result["hf_generate_s"] = time.perf_counter() - start
        print(f"HF generate + TrieLogitsProcessor: {result['hf_generate_s']:.2f} s "
              f"({result['hf_generate_s'] / total:.1f}x rere)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
