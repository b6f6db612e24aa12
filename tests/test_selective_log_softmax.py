"""selective_log_softmax and fused_linear_selective_log_softmax against float64 references.

Triton runs on KERNEL_DEVICE: the GPU when there is one, else the CPU under
TRITON_INTERPRET=1 (set by conftest.py), so its shapes stay small here; the 151,936-token
vocabulary runs on the torch backend, and on Triton only in `gpu`-marked tests.

Tolerances: outputs are fp32 math on the (already rounded) input values, so they match the
float64 reference to ~1e-6 whatever the input dtype. Gradients are written in the logits'
dtype, so they carry that dtype's rounding (relative 2^-8 for bf16 on a GPU; the Triton
interpreter converts fp32 -> bf16 by truncation, so up to 2^-7 there).
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch

from conftest import KERNEL_DEVICE
from rere.kernels.fused_linear_selective_log_softmax import fused_linear_selective_log_softmax
from rere.kernels.selective_log_softmax import selective_log_softmax

# The modules, not the functions that rere.kernels re-exports under the same names.
sls_mod = importlib.import_module("rere.kernels.selective_log_softmax")
fused_mod = importlib.import_module("rere.kernels.fused_linear_selective_log_softmax")

BACKENDS = [("torch", "cpu"), ("triton", KERNEL_DEVICE)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OUT_TOL = 5e-6  # absolute, plus OUT_RTOL, on fp32 log-probs of size ~log(V) + logit range
OUT_RTOL = 1e-6
GRAD_TOL = {torch.float32: 1e-6, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}  # relative to max |g|
QWEN2_VOCAB = 151_936

# The interpreter runs the kernels with numpy, which warns about log(0) and inf - inf that the
# -inf / NaN tests provoke on purpose (a GPU computes the same values silently).
pytestmark = pytest.mark.filterwarnings("ignore:(divide by zero|invalid value) encountered:RuntimeWarning")

backends = pytest.mark.parametrize("backend,device", BACKENDS, ids=[b for b, _ in BACKENDS])
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))


def reference(logits, token_ids, grad_out, ignore_index=-100):
    """float64 log_softmax gathered at token_ids (0 where ignored) and its gradient."""
    x = logits.detach().double().requires_grad_()
    ignored = token_ids == ignore_index
    out = torch.log_softmax(x, -1).gather(-1, token_ids.masked_fill(ignored, 0)[..., None].long())[..., 0]
    out = out.masked_fill(ignored, 0.0)
    (grad,) = torch.autograd.grad(out, x, grad_out.double())
    return out, grad


def run(logits, token_ids, grad_out, **kwargs):
    """The op's output and d(out . grad_out)/d logits."""
    logits = logits.detach().requires_grad_()
    out = selective_log_softmax(logits, token_ids, **kwargs)
    (grad,) = torch.autograd.grad(out, logits, grad_out)
    return out, grad


def assert_matches(out, grad, ref_out, ref_grad, grad_out, dtype):
    assert out.dtype == torch.float32
    assert out.shape == ref_out.shape and grad.shape == ref_grad.shape
    torch.testing.assert_close(out.double().cpu(), ref_out.cpu(), rtol=OUT_RTOL, atol=OUT_TOL, equal_nan=True)
    scale = max(1.0, float(grad_out.abs().max()))
    torch.testing.assert_close(grad.double().cpu(), ref_grad.cpu(), rtol=GRAD_TOL[dtype],
                               atol=GRAD_TOL[dtype] * scale, equal_nan=True)


def make(shape, dtype, device, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=gen) * scale).to(dtype).to(device)
    ids = torch.randint(0, shape[-1], shape[:-1], generator=gen).to(device)
    grad_out = torch.randn(shape[:-1], generator=gen).to(device)
    return logits, ids, grad_out


# ----------------------------------------------------------------------------- selective_log_softmax

# (leading dims..., V): V = 1, N = 1, V not a power of two, V spanning blocks with a remainder
# (rere.kernels.launch.STREAM_BLOCKS: at most 4,096), and 3-D leading dims.
SHAPES = [(1, 1), (1, 7), (6, 1), (5, 33), (3, 1000), (3, 4097), (2, 3, 50)]


@backends
@dtypes
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(backend, device, dtype, shape):
    logits, ids, g = make(shape, dtype, device)
    out, grad = run(logits, ids, g, backend=backend)
    assert grad.dtype == dtype
    assert_matches(out, grad, *reference(logits, ids, g), g, dtype)


@backends
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_multi_block_rows(backend, device, dtype, monkeypatch):
    """Many blocks per row, the last one partial: Triton with a 16-wide block; torch with
    chunks of 3 rows (so chunk boundaries fall inside the batch)."""
    monkeypatch.setattr(sls_mod, "stream_block", lambda length: (16, 1))
    monkeypatch.setitem(sls_mod.TORCH_CHUNK_BYTES, "cpu", 3 * 4 * 83)
    logits, ids, g = make((8, 83), dtype, device, seed=1)
    out, grad = run(logits, ids, g, backend=backend)
    assert_matches(out, grad, *reference(logits, ids, g), g, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_qwen2_vocab_torch(dtype):
    """The real vocabulary size on the torch backend (several row chunks of 13 rows)."""
    logits, ids, g = make((2, 70, QWEN2_VOCAB), dtype, "cpu", seed=2)
    ids[0, :5] = torch.tensor([0, QWEN2_VOCAB - 1, 1, QWEN2_VOCAB - 2, 77_777])
    out, grad = run(logits, ids, g, backend="torch")
    assert_matches(out, grad, *reference(logits, ids, g), g, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_qwen2_vocab_triton(dtype):
    logits, ids, g = make((4, 256, QWEN2_VOCAB), dtype, "cuda", seed=3)
    out, grad = run(logits, ids, g, backend="triton")
    assert_matches(out, grad, *reference(logits, ids, g), g, dtype)


@backends
def test_default_backend(backend, device):
    """backend=None: Triton for CUDA tensors, torch otherwise; same numbers either way."""
    logits, ids, g = make((4, 40), torch.float32, device)
    out, _ = run(logits, ids, g)
    ref, _ = run(logits, ids, g, backend=backend)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@backends
@dtypes
def test_ignore_index(backend, device, dtype):
    logits, ids, g = make((3, 5, 29), dtype, device, seed=4)
    ids[0, 1:3] = -100
    ids[2, :] = -100
    logits[2, 4] = float("nan")  # padding may hold anything: still 0 and zero gradient
    out, grad = run(logits, ids, g, backend=backend)
    assert (out[ids == -100] == 0).all() and (grad[ids == -100] == 0).all()
    keep = ids != -100
    ref_out, ref_grad = reference(logits, ids, g)
    assert_matches(out[keep], grad[keep], ref_out[keep], ref_grad[keep], g, dtype)


@backends
def test_custom_ignore_index(backend, device):
    logits, ids, g = make((6, 10), torch.float32, device)
    ids[[1, 4]] = -1
    out, grad = run(logits, ids, g, ignore_index=-1, backend=backend)
    assert_matches(out, grad, *reference(logits, ids, g, ignore_index=-1), g, torch.float32)
    ids[1] = -100  # not ignored any more: out of range
    with pytest.raises(ValueError, match=r"token_ids\[1\] = -100"):
        selective_log_softmax(logits, ids, ignore_index=-1, backend=backend)


@backends
@pytest.mark.parametrize("bad,where", [(-5, (0, 2)), (17, (1, 0)), (10**9, (1, 1))])
def test_out_of_range_ids(backend, device, bad, where):
    logits, ids, _ = make((2, 4, 17), torch.float32, device)
    ids[where] = bad
    ids[1, 3] = 17  # a later bad position: the message names the first
    with pytest.raises(ValueError, match=rf"token_ids\[{where[0]}, {where[1]}\] = {bad} .*\[0, 17\)"):
        selective_log_softmax(logits, ids, backend=backend)


def test_bad_arguments():
    logits, ids, _ = make((3, 8), torch.float32, "cpu")
    with pytest.raises(ValueError, match="shape"):
        selective_log_softmax(logits, ids[:2])
    with pytest.raises(TypeError, match="integer"):
        selective_log_softmax(logits, ids.float())
    with pytest.raises(ValueError, match="backend"):
        selective_log_softmax(logits, ids, backend="cuda")


@backends
@dtypes
def test_neg_inf_logits(backend, device, dtype):
    """Masked vocabularies: -inf logits are fine; a target at -inf gives -inf (gradient
    finite, as through log_softmax); a row of -inf only gives NaN, as log_softmax."""
    logits, ids, g = make((4, 37), dtype, device, seed=5)
    logits[:, ::3] = float("-inf")
    ids[0] = 0  # target at -inf
    ids[[1, 3]] = 1  # not at -inf
    logits[1, 20:] = float("-inf")
    logits[2, :] = float("-inf")  # whole row
    out, grad = run(logits, ids, g, backend=backend)
    ref_out, ref_grad = reference(logits, ids, g)
    assert out[0] == float("-inf") and torch.isfinite(grad[0]).all()
    assert torch.isnan(out[2])
    assert torch.isfinite(out[[1, 3]]).all()
    assert_matches(out, grad, ref_out, ref_grad, g, dtype)


@backends
@pytest.mark.parametrize("poison", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_and_pos_inf_poison_the_row_only(backend, device, poison):
    logits, ids, g = make((4, 300), torch.float32, device, seed=6)
    logits[1, 123] = poison  # not the target
    ids[1] = 7
    logits[3, ids[3]] = poison  # the target itself
    out, grad = run(logits, ids, g, backend=backend)
    assert torch.isnan(out[[1, 3]]).all() and torch.isnan(grad[[1, 3]]).all()
    ref_out, ref_grad = reference(logits, ids, g)
    assert torch.isnan(ref_out[[1, 3]]).all()  # the semantics we copy
    assert_matches(out[[0, 2]], grad[[0, 2]], ref_out[[0, 2]], ref_grad[[0, 2]], g, torch.float32)


@backends
@dtypes
@pytest.mark.parametrize("view", ["shift", "transpose", "vocab_stride", "three_dims"])
def test_non_contiguous(backend, device, dtype, view):
    """Views a trainer passes: logits[:, :-1] (the shift before comparing with the next
    token), a transposed [T, B, V], a strided vocabulary, and a view whose leading dims do
    not collapse to two strides (copied once on the Triton backend)."""
    full, _, _ = make((3, 6, 41), dtype, device, seed=7)
    logits = {
        "shift": lambda: full[:, :-1],
        "transpose": lambda: full.transpose(0, 1),
        "vocab_stride": lambda: full[..., ::2],
        "three_dims": lambda: full.view(3, 2, 3, 41)[:, :, 1:],
    }[view]()
    assert not logits.is_contiguous()
    gen = torch.Generator().manual_seed(8)
    ids = torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=gen).to(device)
    g = torch.randn(logits.shape[:-1], generator=gen).to(device)
    out, grad = run(logits, ids, g, backend=backend)
    assert_matches(out, grad, *reference(logits, ids, g), g, dtype)


@backends
def test_gradient_flows_through_views(backend, device):
    """The usual trainer pattern: the gradient reaches the full [B, T, V] tensor."""
    full, _, _ = make((2, 5, 23), torch.bfloat16, device, seed=9)
    full.requires_grad_()
    ids = torch.randint(0, 23, (2, 4), device=device)
    selective_log_softmax(full[:, :-1], ids, backend=backend).sum().backward()
    x = full.detach().double().requires_grad_()
    torch.log_softmax(x[:, :-1], -1).gather(-1, ids[..., None])[..., 0].sum().backward()
    assert (full.grad[:, -1] == 0).all()
    torch.testing.assert_close(full.grad.double(), x.grad, rtol=GRAD_TOL[torch.bfloat16], atol=GRAD_TOL[torch.bfloat16])


@backends
def test_empty(backend, device):
    logits = torch.randn(0, 5, 11, device=device, requires_grad=True)
    ids = torch.zeros(0, 5, dtype=torch.long, device=device)
    out = selective_log_softmax(logits, ids, backend=backend)
    assert out.shape == (0, 5)
    out.sum().backward()
    assert logits.grad.shape == logits.shape


@backends
def test_int32_ids_and_1d_logits(backend, device):
    logits, ids, g = make((9, 12), torch.float32, device)
    out, grad = run(logits, ids.int(), g, backend=backend)
    assert_matches(out, grad, *reference(logits, ids, g), g, torch.float32)
    out1, _ = run(logits[4], ids[4], g[4], backend=backend)  # a single row, V only
    assert out1.shape == () and torch.allclose(out1, out[4])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_triton_memory_does_not_grow_with_vocab(dtype):
    """Forward + backward allocate the [N, V] gradient and O(N) besides, whatever V is."""
    n = 1024
    extras = []
    for vocab in (16_384, QWEN2_VOCAB):
        torch.cuda.empty_cache()
        logits = torch.randn(n, vocab, device="cuda", dtype=dtype, requires_grad=True)
        ids = torch.randint(0, vocab, (n,), device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        selective_log_softmax(logits, ids, backend="triton").sum().backward()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base - logits.grad.numel() * logits.grad.element_size()
        extras.append(extra)
        del logits, ids
    assert max(extras) <= 64 * n + (1 << 20), extras  # O(N) bookkeeping plus allocator slack
    assert abs(extras[1] - extras[0]) <= (1 << 20), extras


# ----------------------------------------------------------------------------- fused linear


def fused_reference(hidden, weight, bias, ids, grad_out, temperature, ignore_index=-100):
    """The explicit computation, hidden @ W.T (+ b), in float64, and its gradients."""
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    logits = leaves[0] @ leaves[1].T
    if bias is not None:
        logits = logits + leaves[2]
    ignored = ids == ignore_index
    out = torch.log_softmax(logits / temperature, -1).gather(-1, ids.masked_fill(ignored, 0)[..., None])[..., 0]
    out = out.masked_fill(ignored, 0.0)
    grads = torch.autograd.grad(out, leaves, grad_out.double())
    return out, grads


# Fused tolerances: the matmuls run in the inputs' dtype (bf16 logits are rounded to bf16 as
# in the unfused path), so compare with dtype-sized absolute tolerances.
FUSED_TOL = {torch.float32: 2e-5, torch.bfloat16: 4e-2, torch.float16: 6e-3}

# (leading dims, H, V, chunk_size): chunks that do not divide V, one chunk, V = 1, N = 1.
FUSED_SHAPES = [((5,), 16, 37, 8), ((2, 3), 8, 50, None), ((1,), 8, 1, None), ((4,), 32, 300, 128)]


def make_fused(lead, H, V, dtype, device, bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, H, generator=gen).to(dtype).to(device)
    weight = (torch.randn(V, H, generator=gen) * 2 / math.sqrt(H)).to(dtype).to(device)
    b = torch.randn(V, generator=gen).to(dtype).to(device) if bias else None
    ids = torch.randint(0, V, lead, generator=gen).to(device)
    g = torch.randn(lead, generator=gen).to(device)
    return hidden, weight, b, ids, g


def run_fused(hidden, weight, bias, ids, g, **kwargs):
    leaves = [t.detach().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    out = fused_linear_selective_log_softmax(leaves[0], leaves[1], ids, leaves[2] if bias is not None else None,
                                             **kwargs)
    return out, torch.autograd.grad(out, leaves, g)


def assert_fused_matches(out, grads, ref_out, ref_grads, dtype):
    tol = FUSED_TOL[dtype]
    torch.testing.assert_close(out.double().cpu(), ref_out.cpu(), rtol=0, atol=tol, equal_nan=True)
    for name, got, want in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert got.dtype == dtype and got.shape == want.shape, name
        torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


@backends
@dtypes
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=lambda s: f"{s[0]}-H{s[1]}-V{s[2]}-c{s[3]}")
@pytest.mark.parametrize("bias,temperature", [(False, 1.0), (True, 0.7)], ids=["plain", "bias-T0.7"])
def test_fused_matches_explicit(backend, device, dtype, shape, bias, temperature):
    lead, H, V, chunk = shape
    hidden, weight, b, ids, g = make_fused(lead, H, V, dtype, device, bias)
    out, grads = run_fused(hidden, weight, b, ids, g, temperature=temperature, chunk_size=chunk, backend=backend)
    assert out.dtype == torch.float32 and out.shape == ids.shape
    assert_fused_matches(out, grads, *fused_reference(hidden, weight, b, ids, g, temperature), dtype)


@backends
def test_fused_ignore_index(backend, device):
    hidden, weight, b, ids, g = make_fused((3, 4), 16, 45, torch.float32, device, bias=True, seed=1)
    ids[0, 1] = ids[2, 3] = -100
    hidden[2, 3] = float("nan")  # padding may hold anything
    out, grads = run_fused(hidden, weight, b, ids, g, temperature=1.3, chunk_size=16, backend=backend)
    assert (out[ids == -100] == 0).all() and (grads[0][ids == -100] == 0).all()
    ref_hidden = hidden.masked_fill((ids == -100)[..., None], 0.0)  # float64 reference without the NaN
    assert_fused_matches(out, grads, *fused_reference(ref_hidden, weight, b, ids, g, 1.3), torch.float32)


@backends
def test_fused_all_ignored_and_errors(backend, device):
    hidden, weight, _, ids, g = make_fused((4,), 8, 10, torch.float32, device, bias=False)
    out, grads = run_fused(hidden, weight, None, torch.full_like(ids, -100), g, backend=backend)
    assert (out == 0).all() and all((x == 0).all() for x in grads)
    ids[2] = 10
    with pytest.raises(ValueError, match=r"token_ids\[2\] = 10"):
        fused_linear_selective_log_softmax(hidden, weight, ids, backend=backend)
    with pytest.raises(ValueError, match="temperature"):
        fused_linear_selective_log_softmax(hidden, weight, ids.clamp(max=9), temperature=0.0, backend=backend)


@backends
def test_fused_frozen_weight(backend, device):
    """Only hidden needs a gradient (a frozen LM head): weight's matmuls are skipped."""
    hidden, weight, _, ids, g = make_fused((6,), 16, 40, torch.float32, device, bias=False, seed=2)
    h = hidden.clone().requires_grad_()
    fused_linear_selective_log_softmax(h, weight, ids, chunk_size=16, backend=backend).backward(g)
    _, (ref_h, _) = fused_reference(hidden, weight, None, ids, g, 1.0)
    torch.testing.assert_close(h.grad.double().cpu(), ref_h.cpu(), rtol=2e-5, atol=2e-5)
    assert weight.grad is None


@backends
def test_fused_default_chunk(backend, device, monkeypatch):
    """chunk_size=None: the budget sets the width (forced small here), a multiple of 128."""
    monkeypatch.setitem(fused_mod.CHUNK_BUDGET_BYTES, torch.device(device).type, 4 * 3 * 128)
    assert fused_mod.default_chunk_size(3, 1000, device) == 128
    assert fused_mod.default_chunk_size(3, 100, device) == 100
    hidden, weight, b, ids, g = make_fused((3,), 8, 300, torch.float32, device, bias=True, seed=3)
    out, grads = run_fused(hidden, weight, b, ids, g, backend=backend)
    assert_fused_matches(out, grads, *fused_reference(hidden, weight, b, ids, g, 1.0), torch.float32)


def test_fused_qwen2_vocab_torch():
    hidden, weight, b, ids, g = make_fused((64,), 32, QWEN2_VOCAB, torch.float32, "cpu", bias=False, seed=4)
    out, grads = run_fused(hidden, weight, b, ids, g, temperature=0.9, backend="torch")
    assert_fused_matches(out, grads, *fused_reference(hidden, weight, b, ids, g, 0.9), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_fused_qwen2_vocab_triton(dtype):
    hidden, weight, b, ids, g = make_fused((512,), 256, QWEN2_VOCAB, dtype, "cuda", bias=True, seed=5)
    out, grads = run_fused(hidden, weight, b, ids, g, temperature=0.9, backend="triton")
    assert_fused_matches(out, grads, *fused_reference(hidden, weight, b, ids, g, 0.9), dtype)
