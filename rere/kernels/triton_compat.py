"""`triton` and `triton.language`, or stand-ins that let the kernel modules import without
Triton (it has wheels for Linux only): the kernels are then defined but never launched,
and `backend.resolve` keeps every op on its torch twin."""
from __future__ import annotations

from types import SimpleNamespace

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    def _jit(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

    triton = SimpleNamespace(jit=_jit, next_power_of_2=lambda n: 1 << max(int(n) - 1, 0).bit_length())
    tl = SimpleNamespace(constexpr=lambda value=None: value)

__all__ = ["triton", "tl"]
