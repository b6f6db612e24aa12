"""What every kernel launch in `rere.kernels` shares: compiler options and block choices.

Each choice a launcher can make is a value from a small table here or in its module
(`STREAM_BLOCKS`, `beam_step.K_PADS`): `rere.kernels.aot` compiles every entry of every
table for the GPU targets in CI, so a launcher can only pick a configuration that has been
compiled, register-checked and spill-checked ahead of any GPU run.
"""
from __future__ import annotations

from rere.kernels.triton_compat import triton

# FP fusion (a * b + c as one FMA) is off, on purpose and explicitly. Triton 3.9 turns it
# on unless told (and warns that the default flips in 3.10); off, every product rounds as
# in the torch twin, so the two differ only by `tl.exp` / `tl.log`, which compile to the
# approximate ex2 / lg2 instructions (a few ulp). The kernels here stream logits from
# memory: their arithmetic is not what bounds them. The README's "GPU numerics" says what
# this guarantees.
# maxnreg: an explicit budget of 128 registers a thread. Left to its own heuristic, ptxas
# spilled in three top-k configurations while using only 64-96 registers (beam_topk at
# K_PAD 128 on sm_90, 4 warps; the merge at K_PAD 64 on sm_90, 4 warps; the merge at
# K_PAD 128 on sm_80, 8 warps: 8 bytes of spill stores each); with the budget none
# of the 196 compilations spills (`python -m rere.kernels.aot`).
COMPILE_OPTIONS = {"enable_fp_fusion": False, "maxnreg": 128}

# Blocks for one program streaming a long row (a vocabulary row, a chunk of one): the
# smallest power of two that covers the row, clamped to these. 1,024 is the floor so that
# tiny vocabularies share one compiled variant; 4,096 fp32 values (16 KB) per step at 8
# warps is 16 values a thread.
STREAM_BLOCKS = (1024, 2048, 4096)


def stream_block(length: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for streaming a row of `length` values: ~512 values a warp."""
    block = min(max(triton.next_power_of_2(max(length, 1)), STREAM_BLOCKS[0]), STREAM_BLOCKS[-1])
    return block, block // 512
