"""Triton selective_log_softmax on a CUDA GPU: time, achieved bandwidth and peak memory,
against the naive `log_softmax(logits.float(), -1).gather(...)`.

    python benchmarks/gpu_selective_log_softmax.py
    python benchmarks/gpu_selective_log_softmax.py --tokens 1024 4096 --dtypes bf16 --vocab 151936

A plain script (not collected by pytest: the name does not start with bench_); it needs a
CUDA GPU and Triton, so it has not run on the CPU-only development machine.

Bandwidth counts the bytes the op must move at least: the forward reads the logits once
(N x V x itemsize); the backward reads them again and writes the gradient (2 x N x V x
itemsize). The naive version is charged the same useful bytes, so its GB/s is an effective
figure (it moves several times more). Peak memory is torch.cuda.max_memory_allocated()
during one forward + backward, minus what was allocated before (the logits); the [N, V]
gradient itself is included in both and also shown on its own.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rere.kernels.selective_log_softmax import selective_log_softmax

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def naive(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None])[..., 0]


def ours(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return selective_log_softmax(logits, ids, backend="triton")


def bench_ms(fn) -> float:
    """Median time of fn in ms (triton.testing.do_bench flushes L2 between runs)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def peak_extra_bytes(fn, logits, ids, g) -> int:
    logits.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(logits, ids).backward(g)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    logits.grad = None
    return peak


def measure(fn, n: int, vocab: int, dtype: torch.dtype) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(n, vocab, device="cuda", generator=gen) * 3).to(dtype).requires_grad_()
    ids = torch.randint(0, vocab, (n,), device="cuda", generator=gen)
    g = torch.randn(n, device="cuda", generator=gen)
    elems = n * vocab * logits.element_size()

    with torch.no_grad():
        fwd_ms = bench_ms(lambda: fn(logits, ids))
    out = fn(logits, ids)
    bwd_ms = bench_ms(lambda: torch.autograd.grad(out, logits, g, retain_graph=True))
    peak = peak_extra_bytes(fn, logits, ids, g)
    result = dict(out=out.detach(), fwd_ms=fwd_ms, fwd_gbs=elems / fwd_ms / 1e6, bwd_ms=bwd_ms,
                  bwd_gbs=2 * elems / bwd_ms / 1e6, peak_mb=peak / 2**20, grad_mb=elems / 2**20)
    del out, logits
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--skip-naive", action="store_true", help="only the Triton op (less memory)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")

    print(f"# {torch.cuda.get_device_name()}, V = {args.vocab}; times are medians")
    header = (f"{'N':>6} {'dtype':>5} {'impl':>6} | {'fwd ms':>8} {'fwd GB/s':>9} | {'bwd ms':>8} "
              f"{'bwd GB/s':>9} | {'peak MB':>9} {'grad MB':>8} {'peak-grad':>9} | {'max |diff|':>10}")
    print(header)
    print("-" * len(header))
    figures = {"device": torch.cuda.get_device_name(), "vocab": args.vocab, "rows": []}
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for n in args.tokens:
            rows = {"triton": measure(ours, n, args.vocab, dtype)}
            if not args.skip_naive:
                rows["naive"] = measure(naive, n, args.vocab, dtype)
            reference = rows.get("naive", rows["triton"])["out"]
            for impl, r in rows.items():
                diff = (r["out"] - reference).abs().max().item()
                figures["rows"].append({"N": n, "dtype": dtype_name, "impl": impl, "max_abs_diff": diff,
                                        **{key: value for key, value in r.items() if key != "out"}})
                print(f"{n:>6} {dtype_name:>5} {impl:>6} | {r['fwd_ms']:>8.3f} {r['fwd_gbs']:>9.0f} | "
                      f"{r['bwd_ms']:>8.3f} {r['bwd_gbs']:>9.0f} | {r['peak_mb']:>9.0f} {r['grad_mb']:>8.0f} "
                      f"{r['peak_mb'] - r['grad_mb']:>9.1f} | {diff:>10.2e}")
            if "naive" in rows:
                t, nv = rows["triton"], rows["naive"]
                print(f"{'':>6} {'':>5} {'ratio':>6} | {nv['fwd_ms'] / t['fwd_ms']:>7.2f}x {'':>9} | "
                      f"{nv['bwd_ms'] / t['bwd_ms']:>7.2f}x {'':>9} | {nv['peak_mb'] / max(t['peak_mb'], 1e-9):>8.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
