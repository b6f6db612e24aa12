"""A candidate's score and tie-break packed into one int64, so that top-k is one integer top-k.

High 32 bits: the float32 score mapped to an int32 that orders like the float (negative
floats have their magnitude bits flipped); NaN maps below -inf, so a NaN candidate ranks
last. Low 32 bits: `0xFFFFFFFF - key`, so that of two equal scores the lower key (lower
parent beam, then lower token) ranks first, as `torch.topk` on the dense tensor does.
An empty slot is INT64_MIN, below every real candidate (real low halves are >= 1).

The Triton kernels use the `tl_` twins of these functions; the two must stay bit-identical.
"""
from __future__ import annotations

import torch
from rere.kernels.triton_compat import tl, triton

EMPTY = -(2**63)
# The same, for kernels: compiled Triton reads only constexpr globals (the interpreter reads any).
TL_EMPTY = tl.constexpr(EMPTY)
KEY_LIMIT = 2**32 - 1  # keys must be below this
_LOW = 0xFFFFFFFF
_INT32_MIN = -(2**31)


def pack(scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    bits = scores.to(torch.float32).view(torch.int32)
    order = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    order = torch.where(torch.isnan(scores), _INT32_MIN, order)
    return (order.to(torch.int64) << 32) | (_LOW - keys.to(torch.int64))


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores float32, keys int64, valid bool); invalid (empty) slots get -inf and -1."""
    valid = packed != EMPTY
    order = (packed >> 32).to(torch.int32)
    bits = order ^ ((order >> 31) & 0x7FFFFFFF)
    scores = torch.where(valid, bits.view(torch.float32), float("-inf"))
    keys = torch.where(valid, _LOW - (packed & _LOW), -1)
    return scores, keys, valid


@triton.jit
def tl_pack(scores, keys):
    bits = scores.to(tl.int32, bitcast=True)
    order = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    order = tl.where(scores != scores, -2147483648, order)
    return (order.to(tl.int64) << 32) | (0xFFFFFFFF - keys.to(tl.int64))


@triton.jit
def tl_unpack_score(packed):
    order = (packed >> 32).to(tl.int32)
    bits = order ^ ((order >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def tl_unpack_key(packed):
    return 0xFFFFFFFF - (packed & 0xFFFFFFFF)
