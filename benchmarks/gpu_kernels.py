"""GPU benchmark of one constrained beam-search step (needs CUDA; not part of pytest).

    python benchmarks/gpu_kernels.py [--rows 64 256 1024 4096] [--beams 16 50] [--json out.json]

For about R beam rows (whole prompts of B beams, k = 2B: training's 16 and evaluation's 50)
over a 1M-item synthetic title catalog and V = 151,936, bf16 and fp32: the time of the
Triton `beam_step` (row pass + merge), of `trie_masked_log_softmax` alone, of the torch
backend and of the eager pipeline (log_softmax, full-size mask, add, topk), with the
achieved bandwidth (logits bytes / time) against the measured device-to-device copy
bandwidth. Target: the step at R >= 256 within 1.3x of one read of the logits. Each
result is checked against the torch twin (`rere.kernels.numerics`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import beam_positions, states_of  # noqa: E402

from rere.index import CatalogIndex  # noqa: E402
from rere.kernels import beam_step, trie_masked_log_softmax  # noqa: E402
from rere.kernels.numerics import candidate_differences  # noqa: E402
from rere.synthetic import title_like_catalog  # noqa: E402

VOCAB = 151_936


def cuda_time(fn, repeat: int = 20) -> float:
    """Median seconds of `fn()` over `repeat` runs, timed with CUDA events after a warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(n_bytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting the read and the write."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * n_bytes / cuda_time(lambda: dst.copy_(src))


def eager_step(index, states, logits, beam_scores, k):
    offsets, tokens = index.allowed(states)
    rows = torch.repeat_interleave(torch.arange(states.numel(), device="cuda"), offsets.diff())
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = torch.full_like(logp, float("-inf"))
    mask[rows, tokens.long()] = 0.0
    scores = logp + mask + beam_scores.reshape(-1, 1)
    return torch.topk(scores.view(beam_scores.shape[0], -1), k, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--beams", type=int, nargs="+", default=[16, 50])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_kernels.py needs a CUDA GPU")

    tokens, offsets = title_like_catalog(1_000_000)
    cpu_index = CatalogIndex.from_flat(tokens, offsets, vocab_size=VOCAB)
    index = cpu_index.to("cuda")
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {bandwidth / 1e9:.0f} GB/s (read + write)")
    results = {"device": torch.cuda.get_device_name(), "copy_GBps": bandwidth / 1e9, "rows": []}
    header = f"{'R':>5} {'B':>3} {'dtype':>9} {'one read':>9} {'triton step':>12} {'x read':>7} {'GB/s':>6} " \
             f"{'masked lsm':>11} {'torch step':>11} {'eager':>9} {'differs':>8}"
    print(header)
    for beams in args.beams:
        for wanted_rows in args.rows:
            rows = max(1, wanted_rows // beams) * beams
            prefixes, _ = beam_positions(tokens, offsets, n_beams=rows, seed=rows)
            states = states_of(cpu_index, prefixes).cuda()
            beam_scores = -torch.rand(rows // beams, beams, device="cuda") * 5
            k = 2 * beams
            for dtype in (torch.bfloat16, torch.float32):
                logits = torch.randn(rows, VOCAB, device="cuda").to(dtype)
                nbytes = logits.numel() * logits.element_size()
                differs = len(candidate_differences(beam_step(logits, states, beam_scores, index.tensors, k),
                                                    beam_step(logits, states, beam_scores, index.tensors, k,
                                                              backend="torch")))
                t_fused = cuda_time(lambda: beam_step(logits, states, beam_scores, index.tensors, k))
                t_lsm = cuda_time(lambda: trie_masked_log_softmax(logits, states, index.tensors))
                t_torch = cuda_time(lambda: beam_step(logits, states, beam_scores, index.tensors, k,
                                                      backend="torch"), repeat=5)
                t_eager = cuda_time(lambda: eager_step(index, states, logits, beam_scores, k), repeat=5)
                one_read = nbytes / (bandwidth / 2)
                row = {"R": rows, "beams": beams, "dtype": str(dtype).removeprefix("torch."), "bytes": nbytes,
                       "one_read_s": one_read, "fused_s": t_fused, "masked_log_softmax_s": t_lsm,
                       "torch_step_s": t_torch, "eager_s": t_eager, "differences_from_torch": differs}
                results["rows"].append(row)
                print(f"{rows:>5} {beams:>3} {row['dtype']:>9} {one_read * 1e6:>7.0f}us {t_fused * 1e6:>10.0f}us "
                      f"{t_fused / one_read:>6.2f}x {nbytes / t_fused / 1e9:>6.0f} {t_lsm * 1e6:>9.0f}us "
                      f"{t_torch * 1e6:>9.0f}us {t_eager * 1e6:>7.0f}us {differs:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
