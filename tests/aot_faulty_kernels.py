"""Kernels that must fail `rere.kernels.aot`'s check: one the compiler rejects though the
interpreter runs it (a plain module global, the bug once found in rere.kernels by reading),
and one that spills registers."""
import triton
import triton.language as tl

SCALE = 2.0  # a plain global: compiled Triton reads only tl.constexpr globals


@triton.jit
def plain_global_kernel(x_ptr):
    tl.store(x_ptr, tl.load(x_ptr) * SCALE)


@triton.jit
def spilling_kernel(x_ptr, BLOCK: tl.constexpr):
    """A 1,024-wide sort in one warp under a 32-register budget."""
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.sort(tl.load(x_ptr + offs)))
