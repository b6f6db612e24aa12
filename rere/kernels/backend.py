"""Which implementation of an op runs: Triton on CUDA tensors, the torch reference elsewhere.

Every op in `rere.kernels` takes `backend=None | "triton" | "torch"`. None picks Triton for
CUDA tensors (when Triton imports) and torch otherwise; `RERE_KERNEL_BACKEND` overrides the
default for a whole process. Tests force `"triton"` on CPU tensors under
`TRITON_INTERPRET=1`, where Triton's interpreter runs the kernels with numpy.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("triton", "torch")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton kernels run in the interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(backend: str | None, *tensors: torch.Tensor) -> str:
    """The backend to run for these tensors."""
    backend = backend or os.environ.get("RERE_KERNEL_BACKEND") or None
    if backend is None:
        on_gpu = any(t.is_cuda for t in tensors)
        return "triton" if on_gpu and triton_available() else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package: pip install triton")
        if not interpreting() and not all(t.is_cuda for t in tensors):
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run on the CPU)")
    return backend
