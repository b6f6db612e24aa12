"""selective_log_softmax: log p(token) under softmax(logits), without a [tokens, V] softmax.

    out = log_softmax(logits.float(), -1).gather(-1, token_ids[..., None])[..., 0]

is what every policy-gradient trainer computes for the sampled tokens (GRPO's ratio and KL
terms need nothing else). Written naively it materialises a float32 [tokens, V] log-softmax
(1,024 tokens x 151,936 Qwen2 logits = 622 MB) and its backward another two [tokens, V]
tensors. Here the forward streams each row once, keeping an online max / sum-exp (the
logsumexp) and the target logit; it saves only the row logsumexp `lse` [N]. The backward is

    d out / d logits[v] = 1[v == t] - exp(logits[v] - lse)

times the incoming gradient, written straight into the logits' gradient (in the logits'
dtype), again one streaming pass. Extra memory is O(N) whatever V is (the torch backend adds
one fixed-size scratch chunk); the logits' own gradient is [N, V] of course.

Two implementations (see `backend.py`):

- "triton": one program per row, streaming over V in BLOCK_V blocks with fp32 accumulation.
  Logits may be any strided view whose leading dims collapse to two strides (e.g.
  `logits[:, :-1]` of a [B, T, V] tensor, or a transpose) without a copy; other layouts are
  copied once with `.contiguous()`.
- "torch": the reference twin and the CPU path. Vectorised over a chunk of rows at a time,
  with the rows per chunk chosen so that a chunk's float32 scratch stays under
  `TORCH_CHUNK_BYTES`; its own autograd.Function whose backward also goes chunk by chunk.
  Non-viewable layouts are gathered one chunk at a time.

Semantics shared by both backends (and tested):

- `token_ids == ignore_index` (trainers pad with -100) gives 0 and a zero gradient row,
  whatever that row's logits hold (NaN included).
- Any other id outside [0, V) raises ValueError naming the first bad position. The check
  runs on the host: one device-to-host sync per call (fine in a training step; do not call
  this inside a decode loop that must stay sync-free).
- -inf logits are fine (masked vocab): a target at -inf gives -inf, and its gradient is
  finite (1 at the target times the incoming gradient, as through `log_softmax`). A row that
  is -inf everywhere gives NaN, as `log_softmax` does.
- A NaN (or +inf) anywhere in a row makes that row's result, and its gradient row, NaN, as
  `log_softmax` does; other rows are unaffected.
"""
from __future__ import annotations

import torch

from . import backend as _backend

from .launch import COMPILE_OPTIONS, stream_block
from .triton_compat import tl, triton

# Budget for the torch backend's float32 scratch chunk of rows (bytes), by device type. On a
# CPU a cache-sized chunk (8 MB: 13 rows of Qwen2's 151,936 logits) lets the element-wise
# passes over it hit cache (forward at N = 2,048 on the 2-core dev machine: 0.28 s at 8 MB,
# 0.31 s at 32 MB, 0.36 s at 2 MB, 0.38 s at 128 MB); on a GPU each pass is a kernel launch,
# so chunks are larger. Either way the scratch is small next to the logits themselves.
TORCH_CHUNK_BYTES = {"cpu": 8 << 20, "cuda": 256 << 20}


# ----------------------------------------------------------------------------- checks


def check_token_ids(token_ids: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    """Raise ValueError naming the first id outside [0, vocab_size) that is not ignore_index.

    One host sync (`.any()`); the O(N) boolean temporaries are negligible.
    """
    bad = (token_ids != ignore_index) & ((token_ids < 0) | (token_ids >= vocab_size))
    if bool(bad.any()):
        position = tuple(int(i) for i in bad.nonzero()[0])
        value = int(token_ids[position])
        raise ValueError(
            f"token_ids{list(position)} = {value} is outside the vocabulary [0, {vocab_size}) "
            f"and is not ignore_index ({ignore_index})"
        )


def _check_inputs(logits: torch.Tensor, token_ids: torch.Tensor, ignore_index: int) -> None:
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be [..., V] with V >= 1, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise TypeError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    if token_ids.shape != logits.shape[:-1]:
        raise ValueError(
            f"token_ids shape {tuple(token_ids.shape)} must be logits.shape[:-1] = {tuple(logits.shape[:-1])}"
        )
    if token_ids.device != logits.device:
        raise ValueError(f"token_ids on {token_ids.device} but logits on {logits.device}")
    check_token_ids(token_ids, logits.shape[-1], ignore_index)


# ----------------------------------------------------------------------------- Triton


@triton.jit
def _selective_log_softmax_fwd_kernel(
    x_ptr,  # logits, any dtype; row r starts at (r // n_inner) * stride_outer + (r % n_inner) * stride_inner
    ids_ptr,  # [N] int token ids
    out_ptr,  # [N] fp32 result
    lse_ptr,  # [N] fp32 row logsumexp, saved for the backward
    V,
    n_inner,
    stride_outer,
    stride_inner,
    stride_v,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    # int64 row: N * V exceeds 2**31 at 16k tokens of a 152k vocabulary.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + (row // n_inner) * stride_outer + (row % n_inner) * stride_inner
    t = tl.load(ids_ptr + row)
    if t == ignore_index:
        # Padding: nothing to read. lse is never used for such rows; store a finite 0.
        tl.store(out_ptr + row, 0.0)
        tl.store(lse_ptr + row, 0.0)
        return

    # Online logsumexp: m is the running max, d the running sum of exp(x - m).
    m = float("-inf")
    d = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + offs * stride_v, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        # While every logit seen is -inf, m_new is -inf and x - m_new would be NaN; shift
        # by 0 instead so such blocks add exp(-inf) = 0. A row that is -inf throughout
        # ends with d = 0, lse = -inf and out = NaN, as log_softmax. A NaN logit makes d
        # NaN whichever way tl.max treats NaN, so the row's result is NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), 0)
        m = m_new
    lse = m + tl.log(d)
    # Ids were checked on the host, so this scalar load is in bounds.
    x_t = tl.load(x_row + t * stride_v).to(tl.float32)
    tl.store(out_ptr + row, x_t - lse)
    tl.store(lse_ptr + row, lse)

@triton.jit
def _selective_log_softmax_bwd_kernel(
    x_ptr,  # logits, same layout as in the forward
    ids_ptr,
    lse_ptr,
    g_ptr,  # [N] fp32 incoming gradient
    dx_ptr,  # [N, V] contiguous gradient, in the logits' dtype
    V,
    n_inner,
    stride_outer,
    stride_inner,
    stride_v,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + (row // n_inner) * stride_outer + (row % n_inner) * stride_inner
    dx_row = dx_ptr + row * V
    t = tl.load(ids_ptr + row)
    if t == ignore_index:
        # The gradient buffer is torch.empty: padding rows must be written as zeros.
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            tl.store(dx_row + offs, tl.zeros((BLOCK_V,), dx_ptr.dtype.element_ty), mask=offs < V)
        return

    g = tl.load(g_ptr + row)
    lse = tl.load(lse_ptr + row)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        mask = offs < V
        x = tl.load(x_row + offs * stride_v, mask=mask, other=0.0).to(tl.float32)
        gp = g * tl.exp(x - lse)  # g * softmax(x)_v, recomputed from the saved lse
        dx = tl.where(offs == t, g - gp, -gp)
        tl.store(dx_row + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _row_layout(x: torch.Tensor) -> tuple[int, int, int] | None:
    """(n_inner, stride_outer, stride_inner) locating the rows of `x` viewed as [N, V]: row r
    starts at (r // n_inner) * stride_outer + (r % n_inner) * stride_inner. None when the
    leading dims do not collapse into two strided dims (then the caller copies).

    Adjacent leading dims merge when the outer one's stride is the inner one's stride times
    its size (as in `view`); size-1 dims drop. `logits[:, :-1]` of a contiguous [B, T, V]
    leaves two dims, (B, T*V) and (T-1, V), which is why two are supported.
    """
    dims: list[list[int]] = []
    for size, stride in zip(x.shape[:-1], x.stride()[:-1]):
        if size == 1:
            continue
        if dims and dims[-1][1] == stride * size:
            dims[-1] = [dims[-1][0] * size, stride]
        else:
            dims.append([size, stride])
    if not dims:
        return 1, 0, 0
    if len(dims) == 1:
        return dims[0][0], 0, dims[0][1]
    if len(dims) == 2:
        return dims[1][0], dims[0][1], dims[1][1]
    return None


def _triton_forward(logits: torch.Tensor, ids: torch.Tensor, ignore_index: int):
    """Launch the forward kernel. Returns (out [N] fp32, lse [N] fp32, the logits tensor the
    kernel read, its row layout) — the last two are what the backward must read again."""
    layout = _row_layout(logits)
    if layout is None:  # >2 non-collapsible leading dims: rare; copy once
        logits = logits.contiguous()
        layout = _row_layout(logits)
    V = logits.shape[-1]
    N = ids.numel()
    out = torch.empty(N, dtype=torch.float32, device=logits.device)
    lse = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N:
        block, warps = stream_block(V)
        _selective_log_softmax_fwd_kernel[(N,)](
            logits, ids, out, lse, V, *layout, logits.stride(-1), ignore_index,
            BLOCK_V=block, num_warps=warps, **COMPILE_OPTIONS,
        )
    return out, lse, logits, layout


def _triton_backward(logits, layout, ids, lse, grad_out, ignore_index):
    V = logits.shape[-1]
    N = ids.numel()
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if N:
        block, warps = stream_block(V)
        _selective_log_softmax_bwd_kernel[(N,)](
            logits, ids, lse, grad_out, grad, V, *layout, logits.stride(-1), ignore_index,
            BLOCK_V=block, num_warps=warps, **COMPILE_OPTIONS,
        )
    return grad


class _SelectiveLogSoftmaxTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, token_ids, ignore_index):
        ids = token_ids.reshape(-1).contiguous()
        out, lse, read, layout = _triton_forward(logits, ids, ignore_index)
        # `read` is `logits` itself unless a copy was needed: saving it costs nothing extra.
        ctx.save_for_backward(read, ids, lse)
        ctx.layout = layout
        ctx.ignore_index = ignore_index
        ctx.shape = logits.shape
        return out.view(token_ids.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        read, ids, lse = ctx.saved_tensors
        g = grad_out.reshape(-1).to(torch.float32).contiguous()  # may arrive expanded (stride 0)
        grad = _triton_backward(read, ctx.layout, ids, lse, g, ctx.ignore_index)
        return grad.view(ctx.shape), None, None


# ----------------------------------------------------------------------------- torch


def _rows_getter(logits: torch.Tensor):
    """A function (r0, r1) -> rows r0:r1 of logits viewed as [N, V], copying only that chunk
    when the leading dims do not flatten to a view (e.g. `logits[:, :-1]`)."""
    V = logits.shape[-1]
    try:
        flat = logits.view(-1, V)
    except RuntimeError:
        lead = logits.shape[:-1]

        def rows(r0: int, r1: int) -> torch.Tensor:
            index = torch.unravel_index(torch.arange(r0, r1, device=logits.device), lead)
            return logits[index]

        return rows
    return lambda r0, r1: flat[r0:r1]


def _torch_chunk_rows(V: int, device: torch.device) -> int:
    budget = TORCH_CHUNK_BYTES.get(device.type, TORCH_CHUNK_BYTES["cpu"])
    return max(1, budget // (4 * V))


def _scratch_rows(scratch: torch.Tensor, rows: int, V: int) -> torch.Tensor:
    """A contiguous [rows, V] float32 view of the chunk scratch buffer."""
    return scratch[: rows * V].view(rows, V)


def _torch_forward(logits: torch.Tensor, ids: torch.Tensor, ignore_index: int):
    """out [N], lse [N] (fp32), chunk of rows by chunk of rows.

    One float32 scratch buffer of chunk size is allocated once and reused: allocating a
    fresh multi-MB temporary per chunk costs page faults on every chunk on a CPU (glibc maps
    and unmaps large blocks), which made the loop up to 2x slower.
    """
    V = logits.shape[-1]
    N = ids.numel()
    rows = _rows_getter(logits)
    out = torch.empty(N, dtype=torch.float32, device=logits.device)
    lse = torch.empty(N, dtype=torch.float32, device=logits.device)
    step = max(1, min(N, _torch_chunk_rows(V, logits.device)))
    scratch = torch.empty(step * V, dtype=torch.float32, device=logits.device)
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        x = rows(r0, r1)  # the logits' dtype: the max is exact in it, and sub promotes to fp32
        # logsumexp by hand rather than torch.logsumexp, which returns +inf for a row holding
        # +inf where log_softmax (and the Triton kernel) give NaN. Same -inf guard as there.
        m = x.amax(-1, keepdim=True).float()
        m.masked_fill_(m == float("-inf"), 0.0)
        shifted = torch.sub(x, m, out=_scratch_rows(scratch, r1 - r0, V))
        chunk_lse = shifted.exp_().sum(-1).log_().add_(m[:, 0])
        t = ids[r0:r1]
        ignored = t == ignore_index
        x_t = x.gather(-1, t.masked_fill(ignored, 0).long()[:, None])[:, 0].float()
        out[r0:r1] = (x_t - chunk_lse).masked_fill_(ignored, 0.0)
        lse[r0:r1] = chunk_lse
    return out, lse


def _torch_backward(logits, ids, lse, grad_out, ignore_index):
    V = logits.shape[-1]
    N = ids.numel()
    rows = _rows_getter(logits)
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    flat = grad.view(-1, V)
    step = max(1, min(N, _torch_chunk_rows(V, logits.device)))
    # fp32 logits: work inside the gradient's own rows; else in a reused fp32 scratch chunk.
    in_place = grad.dtype == torch.float32
    scratch = None if in_place else torch.empty(step * V, dtype=torch.float32, device=logits.device)
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        t = ids[r0:r1]
        ignored = t == ignore_index
        g = grad_out[r0:r1].masked_fill(ignored, 0.0)
        # g * (1[v == t] - softmax_v): -g * p everywhere, then + g at the target.
        d = flat[r0:r1] if in_place else _scratch_rows(scratch, r1 - r0, V)
        torch.sub(rows(r0, r1), lse[r0:r1, None], out=d).exp_().mul_(-g[:, None])
        d.scatter_add_(-1, t.masked_fill(ignored, 0).long()[:, None], g[:, None])
        d.masked_fill_(ignored[:, None], 0.0)  # exact zeros even where padding holds NaN
        if not in_place:
            flat[r0:r1] = d
    return grad


class _SelectiveLogSoftmaxTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, token_ids, ignore_index):
        ids = token_ids.reshape(-1)
        out, lse = _torch_forward(logits, ids, ignore_index)
        ctx.save_for_backward(logits, ids, lse)
        ctx.ignore_index = ignore_index
        return out.view(token_ids.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, ids, lse = ctx.saved_tensors
        g = grad_out.reshape(-1).to(torch.float32)
        return _torch_backward(logits, ids, lse, g, ctx.ignore_index), None, None


# ----------------------------------------------------------------------------- public op


def selective_log_softmax(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    ignore_index: int = -100,
    backend: str | None = None,
) -> torch.Tensor:
    """log_softmax(logits.float(), -1) at `token_ids`, without materialising it.

    Args:
        logits: [..., V] floating point (fp32 / bf16 / fp16), any strides.
        token_ids: integer tensor of shape logits.shape[:-1].
        ignore_index: ids equal to it give 0 and no gradient.
        backend: None (Triton for CUDA tensors, else torch), "triton" or "torch".

    Returns:
        float32 tensor shaped like token_ids, differentiable w.r.t. logits (the gradient
        comes back in logits' dtype).

    Raises:
        ValueError: an id outside [0, V) other than ignore_index (one host sync to check),
        or mismatched shapes / devices.
    """
    _check_inputs(logits, token_ids, ignore_index)
    which = _backend.resolve(backend, logits, token_ids)
    fn = _SelectiveLogSoftmaxTriton if which == "triton" else _SelectiveLogSoftmaxTorch
    return fn.apply(logits, token_ids, ignore_index)


def selective_log_softmax_reference(logits: torch.Tensor, token_ids: torch.Tensor, *, ignore_index: int = -100):
    """The naive formula (materialises [N, V]); for tests and benchmarks only."""
    ignored = token_ids == ignore_index
    out = torch.log_softmax(logits.float(), -1).gather(-1, token_ids.masked_fill(ignored, 0)[..., None].long())[..., 0]
    return out.masked_fill(ignored, 0.0)
