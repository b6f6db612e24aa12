"""fused_linear_selective_log_softmax: log p(token) from the LM head's input, without logits.

    logits = (hidden @ weight.T + bias) / temperature          # [N, V], never materialised
    out    = log_softmax(logits.float(), -1).gather(-1, token_ids[..., None])[..., 0]

A policy-gradient step needs log p of the sampled tokens only, yet the usual path computes
the full [tokens, V] logits (bf16, 16k tokens x 151,936 = 5 GB), a float32 copy for the
softmax, and in the backward as much again. Here the vocabulary is walked in chunks of
`chunk_size` columns:

- forward: for each chunk, z = hidden @ W[c0:c1].T (+ bias) — a plain matmul, left to
  torch / cuBLAS on purpose (a hand-written Triton GEMM would only lose to it) — then the
  row logsumexp is updated online (lse = logaddexp(lse, logsumexp(z / T))) and the target's
  logit is picked when it falls in the chunk. Only lse [N] is saved.
- backward: each chunk's z is recomputed (one more matmul, instead of keeping [N, V]), turned
  into dz = g / T * (1[v == t] - exp(z / T - lse)), and contracted at once:
  grad_hidden += dz @ W[c0:c1] (accumulated over chunks in float32), grad_weight[c0:c1] =
  dz.T @ hidden (complete per chunk: each vocabulary row lives in one chunk), grad_bias[c0:c1]
  = dz.sum(0). Gradients not asked for (`needs_input_grad`) are skipped.

Peak extra memory is O(N x chunk_size + N x H) instead of O(N x V).

Backends: both share this chunk loop and the matmuls. What differs is the element-wise work
on each [N, chunk] block. Done as separate torch ops (cast, scale, max, exp, sum, gather;
then exp, multiply, scatter, cast) it moves ~30 bytes per logit, ~9 ps at 3.3 TB/s, about
what the matmul spends per logit at H = 4,096 (2H flops, ~10 ps at 800 TFLOP/s), and more
than it at smaller H. "triton" does it in one streaming kernel per direction
(`_chunk_lse_kernel` reads z once; `_chunk_grad_kernel` overwrites z with dz in place),
"torch" with vectorised torch ops (the reference, and the CPU path).

Precision: the matmuls run in the inputs' dtype (as the model's own LM head would, cuBLAS
accumulating in fp32), so bf16 logits are rounded to bf16 exactly as in the unfused path;
everything after — scaling, logsumexp, softmax, grad_hidden's sum over chunks — is fp32.
dz is rounded to the inputs' dtype for the backward matmuls.

Rows whose id is `ignore_index` are dropped before any matmul (they give 0 and zero
gradients); other ids outside [0, V) raise ValueError (a host check, as in
`selective_log_softmax`). That compaction is a second host sync; both are per call, not per
chunk.
"""
from __future__ import annotations

import torch

from . import backend as _backend
from .selective_log_softmax import check_token_ids

from .launch import COMPILE_OPTIONS, stream_block
from .triton_compat import tl, triton

# Default budget for one chunk of float32 logits, N_active x chunk_size x 4 bytes, by device
# type. On a CPU the width matters little once the chunk buffers are reused (forward at
# N = 2,048, H = 256 on the 2-core dev machine: 0.92 s at 16 MB, 0.93 s at 64 MB, 0.99 s at 4
# and 256 MB); 16 MB keeps memory small. On a GPU, wide chunks keep the matmuls efficient and
# the launches few (256 MB: 4,096 columns at 16k tokens). Both backends hold one chunk in the
# inputs' dtype; torch adds a float32 copy for bf16 / fp16 inputs.
CHUNK_BUDGET_BYTES = {"cpu": 16 << 20, "cuda": 256 << 20}
# Chunk widths are rounded to this (tensor-core friendly matmul shapes).
CHUNK_MULTIPLE = 128


def default_chunk_size(n_rows: int, vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Columns per chunk so that n_rows x chunk float32 logits stay within the device's
    CHUNK_BUDGET_BYTES (at least CHUNK_MULTIPLE columns, at most the vocabulary)."""
    device_type = torch.device(device).type
    budget = CHUNK_BUDGET_BYTES.get(device_type, CHUNK_BUDGET_BYTES["cpu"])
    chunk = budget // (4 * max(1, n_rows))
    chunk = max(CHUNK_MULTIPLE, chunk // CHUNK_MULTIPLE * CHUNK_MULTIPLE)
    return min(chunk, vocab_size)


# ----------------------------------------------------------------------------- Triton


@triton.jit
def _chunk_lse_kernel(
    z_ptr,  # [N, C] chunk logits (before temperature), inputs' dtype, row stride stride_z
    stride_z,
    ids_ptr,  # [N] target ids (global vocabulary index)
    lse_ptr,  # [N] fp32 running logsumexp of all chunks so far: read, updated, written
    tgt_ptr,  # [N] fp32 target logit (after temperature): written by the chunk holding it
    C,
    col0,  # first vocabulary index of this chunk
    scale,  # 1 / temperature
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    # Online logsumexp over the chunk (see selective_log_softmax's forward kernel for the
    # -inf guard and NaN behaviour).
    m = float("-inf")
    d = 0.0
    for start in range(0, C, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = tl.load(z_row + offs, mask=offs < C, other=float("-inf")).to(tl.float32) * scale
        m_new = tl.maximum(m, tl.max(z, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe), 0)
        m = m_new
    chunk_lse = m + tl.log(d)
    # Merge with the previous chunks: logaddexp, guarded for both -inf.
    prev = tl.load(lse_ptr + row)
    hi = tl.maximum(prev, chunk_lse)
    hi = tl.where(hi == float("-inf"), 0.0, hi)
    tl.store(lse_ptr + row, hi + tl.log(tl.exp(prev - hi) + tl.exp(chunk_lse - hi)))

    t = tl.load(ids_ptr + row) - col0
    inside = (t >= 0) & (t < C)
    z_t = tl.load(z_row + t, mask=inside, other=0.0).to(tl.float32) * scale
    tl.store(tgt_ptr + row, z_t, mask=inside)

@triton.jit
def _chunk_grad_kernel(
    z_ptr,  # [N, C] recomputed chunk logits; overwritten with dz (same dtype)
    stride_z,
    ids_ptr,
    lse_ptr,  # [N] fp32 final logsumexp
    g_ptr,  # [N] fp32 incoming gradient
    C,
    col0,
    scale,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    gs = tl.load(g_ptr + row) * scale  # chain rule through the 1 / temperature
    lse = tl.load(lse_ptr + row)
    t = tl.load(ids_ptr + row) - col0  # outside [0, C) when the target is in another chunk
    for start in range(0, C, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < C
        z = tl.load(z_row + offs, mask=mask, other=0.0).to(tl.float32)
        gp = gs * tl.exp(z * scale - lse)
        dz = tl.where(offs == t, gs - gp, -gp)
        # Each element is read, then written, by this program only: in place is safe.
        tl.store(z_row + offs, dz.to(z_ptr.dtype.element_ty), mask=mask)


def _chunk_lse_triton(z, ids, lse, tgt, col0, scale, scratch=None):
    """Update lse (running logsumexp) and tgt (target logit) in place from chunk logits z."""
    block, warps = stream_block(z.shape[1])
    _chunk_lse_kernel[(z.shape[0],)](
        z, z.stride(0), ids, lse, tgt, z.shape[1], col0, scale, BLOCK=block, num_warps=warps, **COMPILE_OPTIONS
    )


def _chunk_grad_triton(z, ids, lse, g, col0, scale, scratch=None):
    """d out / d z for chunk logits z, written over z (inputs' dtype); returns z."""
    block, warps = stream_block(z.shape[1])
    _chunk_grad_kernel[(z.shape[0],)](
        z, z.stride(0), ids, lse, g, z.shape[1], col0, scale, BLOCK=block, num_warps=warps, **COMPILE_OPTIONS
    )
    return z


# ----------------------------------------------------------------------------- torch
#
# Same contracts as the Triton steps, with torch ops and no host syncs. z is scratch (the
# loop's reused matmul buffer), so fp32 chunks are worked on in place; other dtypes go
# through `scratch`, a reused float32 buffer of at least z.numel() elements.


def _as_float(z, scratch):
    return z if z.dtype == torch.float32 else scratch[: z.numel()].view(z.shape).copy_(z)


def _chunk_lse_torch(z, ids, lse, tgt, col0, scale, scratch=None):
    zf = _as_float(z, scratch)
    if scale != 1.0:
        zf.mul_(scale)
    C = z.shape[1]
    t = ids - col0
    inside = (t >= 0) & (t < C)
    picked = zf.gather(1, t.clamp(0, C - 1)[:, None])[:, 0]
    tgt.copy_(torch.where(inside, picked, tgt))
    # logsumexp by hand: torch.logsumexp gives +inf for a row holding +inf, log_softmax NaN.
    m = zf.amax(-1, keepdim=True)
    m.masked_fill_(m == float("-inf"), 0.0)
    chunk_lse = zf.sub_(m).exp_().sum(-1).log_().add_(m[:, 0])
    torch.logaddexp(lse, chunk_lse, out=lse)  # logaddexp(-inf, -inf) = -inf in torch


def _chunk_grad_torch(z, ids, lse, g, col0, scale, scratch=None):
    zf = _as_float(z, scratch)
    gs = g * scale
    if scale != 1.0:
        zf.mul_(scale)
    zf.sub_(lse[:, None]).exp_().mul_(-gs[:, None])  # -g / T * softmax
    C = z.shape[1]
    t = ids - col0
    inside = (t >= 0) & (t < C)
    zf.scatter_add_(1, t.clamp(0, C - 1)[:, None], torch.where(inside, gs, 0.0)[:, None])
    if zf is not z:
        z.copy_(zf)
    return z


# ----------------------------------------------------------------------------- shared loop


def _chunk_logits(h, w, b, c0, c1, buffer):
    """z = h @ w[c0:c1].T (+ b[c0:c1]) in the inputs' dtype, into the reused buffer: cuBLAS /
    MKL does the matmul, with the bias in the GEMM."""
    z = buffer[: h.shape[0] * (c1 - c0)].view(h.shape[0], c1 - c0)
    if b is None:
        return torch.mm(h, w[c0:c1].T, out=z)
    return torch.addmm(b[c0:c1], h, w[c0:c1].T, out=z)


def _buffers(n, chunk, dtype, device, which):
    """The chunk buffers every chunk reuses: allocating fresh multi-MB temporaries per chunk
    costs page faults on every chunk on a CPU (glibc maps and unmaps large blocks), which
    made the loop up to 2x slower there; on a GPU the caching allocator would hide it."""
    z = torch.empty(n * chunk, dtype=dtype, device=device)
    needs_scratch = which == "torch" and dtype != torch.float32
    scratch = torch.empty(n * chunk, dtype=torch.float32, device=device) if needs_scratch else None
    return z, scratch


class _FusedLinearSelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, token_ids, scale, ignore_index, chunk_size, which):
        H = hidden.shape[-1]
        V = weight.shape[0]
        ids = token_ids.reshape(-1)
        N = ids.numel()
        h = hidden.reshape(N, H)
        # Drop padding rows before any matmul: they cost nothing and get zero gradients.
        active = ids != ignore_index
        if bool(active.all()):  # host sync (one per call)
            index = None
        else:
            index = active.nonzero()[:, 0]
            h, ids = h[index], ids[index]
        ids = ids.long().contiguous()
        n = ids.numel()
        chunk = min(V, chunk_size or default_chunk_size(n, V, hidden.device))
        lse_step = _chunk_lse_triton if which == "triton" else _chunk_lse_torch

        lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=hidden.device)
        tgt = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        if n:
            zbuf, scratch = _buffers(n, chunk, h.dtype, h.device, which)
            for c0 in range(0, V, chunk):
                c1 = min(V, c0 + chunk)
                lse_step(_chunk_logits(h, weight, bias, c0, c1, zbuf), ids, lse, tgt, c0, scale, scratch)
            del zbuf, scratch
        out_active = tgt - lse

        if index is None:
            out = out_active
        else:
            out = torch.zeros(N, dtype=torch.float32, device=hidden.device)
            out[index] = out_active
        ctx.save_for_backward(h, weight, bias, ids, lse, index)
        ctx.meta = (scale, chunk, which, hidden.shape, N)
        return out.view(token_ids.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        h, weight, bias, ids, lse, index = ctx.saved_tensors
        scale, chunk, which, hidden_shape, N = ctx.meta
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_step = _chunk_grad_triton if which == "triton" else _chunk_grad_torch
        V, H = weight.shape
        n = ids.numel()

        g = grad_out.reshape(-1).to(torch.float32)
        if index is not None:
            g = g[index]
        g = g.contiguous()
        grad_h = torch.zeros(n, H, dtype=torch.float32, device=h.device) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        if n:
            zbuf, scratch = _buffers(n, chunk, h.dtype, h.device, which)
            # Low-precision dz @ W lands here, then is summed over chunks in fp32.
            hbuf = torch.empty(n, H, dtype=h.dtype, device=h.device) if need_h and h.dtype != torch.float32 else None
            for c0 in range(0, V, chunk):
                c1 = min(V, c0 + chunk)
                dz = grad_step(_chunk_logits(h, weight, bias, c0, c1, zbuf), ids, lse, g, c0, scale, scratch)
                if need_h:
                    if hbuf is None:
                        grad_h.addmm_(dz, weight[c0:c1])
                    else:
                        grad_h += torch.mm(dz, weight[c0:c1], out=hbuf)
                if need_w:  # complete: vocabulary rows c0:c1 appear in this chunk only
                    torch.mm(dz.T, h, out=grad_w[c0:c1])
                if need_b:
                    grad_b[c0:c1] = dz.sum(0, dtype=torch.float32)

        grad_hidden = None
        if need_h:
            if index is None:
                grad_hidden = grad_h.to(h.dtype)
            else:
                grad_hidden = torch.zeros(N, H, dtype=h.dtype, device=h.device)
                grad_hidden[index] = grad_h.to(h.dtype)
            grad_hidden = grad_hidden.view(hidden_shape)
        return grad_hidden, grad_w, grad_b, None, None, None, None, None


def fused_linear_selective_log_softmax(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """log_softmax((hidden @ weight.T + bias) / temperature, -1) at token_ids, in float32,
    without materialising the [tokens, V] logits.

    Args:
        hidden: [..., H], same dtype as weight (fp32 / bf16 / fp16).
        weight: [V, H] (an LM head's weight).
        token_ids: integer tensor of shape hidden.shape[:-1].
        bias: optional [V].
        temperature: > 0; the logits are divided by it (sampling temperature of the rollout).
        ignore_index: ids equal to it give 0 and no gradient (their rows skip the matmuls).
        chunk_size: vocabulary columns per chunk; None picks one so that active tokens x
            chunk float32 values fit CHUNK_BUDGET_BYTES.
        backend: None (Triton for CUDA tensors, else torch), "triton" or "torch".

    Returns:
        float32 tensor shaped like token_ids, differentiable w.r.t. hidden, weight and bias.
    """
    if hidden.dim() < 1 or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"need hidden [..., H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if token_ids.shape != hidden.shape[:-1]:
        raise ValueError(f"token_ids shape {tuple(token_ids.shape)} must be hidden.shape[:-1] = {tuple(hidden.shape[:-1])}")
    if token_ids.is_floating_point() or token_ids.dtype == torch.bool:
        raise TypeError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise TypeError("hidden, weight and bias must share one dtype")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_token_ids(token_ids, weight.shape[0], ignore_index)
    tensors = (hidden, weight, token_ids) + ((bias,) if bias is not None else ())
    which = _backend.resolve(backend, *tensors)
    return _FusedLinearSelectiveLogSoftmax.apply(
        hidden, weight, bias, token_ids, 1.0 / float(temperature), ignore_index, chunk_size, which
    )


def fused_linear_selective_log_softmax_reference(hidden, weight, token_ids, bias=None, *, temperature=1.0, ignore_index=-100):
    """The explicit computation (materialises [N, V] logits); for tests and benchmarks."""
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    ignored = token_ids == ignore_index
    logp = torch.log_softmax(logits.float() / temperature, -1)
    out = logp.gather(-1, token_ids.masked_fill(ignored, 0)[..., None].long())[..., 0]
    return out.masked_fill(ignored, 0.0)
