"""selective_log_softmax and its fused-linear variant against the naive formulas, on the CPU.

    pytest benchmarks/bench_selective_log_softmax.py --benchmark-enable

N = 2,048 tokens (16 sequences x 128), V = 151,936 (Qwen2), float32, torch backend (the CPU
path; Triton's interpreter is not a benchmark). The fused-linear cases use H = 256 so the
matmuls take seconds, not minutes. Groups put each op beside its naive twin, so the
parenthesised figures in pytest-benchmark's table are the ratios.

Memory: when benchmarking, each case also runs once in a fresh child process
(peak_memory.py): the peak extra memory of the op (gradients included), in MB, is
`extra_info["peak_extra_mb"]` (see --benchmark-json). `extra_info["analytic_mb"]` is what
the design expects (the tensors each implementation allocates).
"""
from __future__ import annotations

import sys

import pytest
import torch

from rere.kernels.fused_linear_selective_log_softmax import CHUNK_BUDGET_BYTES, fused_linear_selective_log_softmax
from peak_memory import measure_in_child, peak_extra_mb, report
from rere.kernels.selective_log_softmax import TORCH_CHUNK_BYTES, selective_log_softmax

B, T = 16, 128
N = B * T
V = 151_936
H = 256
MB = 1 << 20


def make_inputs(kind: str, grad: bool, b: int = B, t: int = T, v: int = V):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, v, (b, t), generator=gen)
    g = torch.randn(b, t, generator=gen)
    if kind == "sls":
        logits = torch.randn(b, t, v, generator=gen).requires_grad_(grad)
        return (logits,), ids, g
    hidden = torch.randn(b, t, H, generator=gen).requires_grad_(grad)
    weight = (torch.randn(v, H, generator=gen) / H**0.5).requires_grad_(grad)
    return (hidden, weight), ids, g


def naive_sls(logits, ids):
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None])[..., 0]


def ours_sls(logits, ids):
    return selective_log_softmax(logits, ids, backend="torch")


def naive_fused(hidden, weight, ids):
    return naive_sls(hidden @ weight.T, ids)


def ours_fused(hidden, weight, ids):
    return fused_linear_selective_log_softmax(hidden, weight, ids, backend="torch")


OPS = {("sls", "naive"): naive_sls, ("sls", "ours"): ours_sls,
       ("fused", "naive"): naive_fused, ("fused", "ours"): ours_fused}


def step(kind, impl, tensors, ids, g, backward):
    """One forward (and backward); gradients are dropped first so each round allocates them."""
    for t in tensors:
        t.grad = None
    out = OPS[kind, impl](*tensors, ids)
    if backward:
        out.backward(g)
    return out


def analytic_mb(kind: str, impl: str, backward: bool) -> float:
    """What the design says the op allocates beyond its inputs (MB)."""
    nv = N * V * 4 / MB
    if impl == "naive":
        # Forward: log_softmax's output (fused: the logits too, alive while it runs). Backward
        # (peak inside log_softmax's backward): its saved output, gather's zero-filled [N, V]
        # gradient and log_softmax's [N, V] gradient; the logits are gone by then.
        return 3 * nv if backward else (1 if kind == "sls" else 2) * nv
    if kind == "sls":
        # Forward: one float32 chunk buffer (x - max). The fp32 backward works inside the
        # [N, V] gradient it returns, after the forward's buffer is gone.
        return nv if backward else TORCH_CHUNK_BYTES["cpu"] / MB
    # One float32 [N, chunk] buffer (the chunk's logits, worked on in place); the backward
    # adds the weight grad, the fp32 grad_hidden and the returned hidden grad.
    return CHUNK_BUDGET_BYTES["cpu"] / MB + ((V * H * 4 + 2 * N * H * 4) / MB if backward else 0)


@pytest.mark.parametrize("impl", ["ours", "naive"])
@pytest.mark.parametrize("kind", ["sls", "fused"])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_selective_log_softmax(benchmark, kind, impl, backward):
    benchmark.group = f"{kind} {'forward+backward' if backward else 'forward'} (N={N}, V={V}{f', H={H}' if kind == 'fused' else ''})"
    tensors, ids, g = make_inputs(kind, backward)
    out = benchmark.pedantic(step, args=(kind, impl, tensors, ids, g, backward), rounds=3, warmup_rounds=1)
    assert out.shape == (B, T) and torch.isfinite(out).all()
    benchmark.extra_info.update(tokens=N, vocab=V, analytic_mb=round(analytic_mb(kind, impl, backward), 1))
    if not benchmark.disabled:  # a child process per case: only when benchmarking
        benchmark.extra_info.update(peak_extra_mb=round(measure_in_child(__file__, kind, impl, str(int(backward))), 1),
                                    memory_method="child process: VmHWM after op - VmRSS before")


def _child(kind: str, impl: str, backward: bool) -> None:
    # A small call first, so that loading kernels, thread pools and autograd's machinery
    # is not counted against the op.
    step(kind, impl, *make_inputs(kind, backward, 2, 3, 1000), backward)
    tensors, ids, g = make_inputs(kind, backward)
    report(peak_extra_mb(lambda: step(kind, impl, tensors, ids, g, backward)))


if __name__ == "__main__" and sys.argv[1:2] == ["--measure"]:
    _child(sys.argv[2], sys.argv[3], bool(int(sys.argv[4])))
