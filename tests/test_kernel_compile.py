"""Every Triton kernel compiled ahead of time for sm_80 and sm_90, on the CPU, at every launch
configuration its dispatcher can choose: no compile error, no register spill, no kernel
left out (`rere.kernels.aot`; ~2 minutes on 2 cores, one check for the whole session).

The interpreter tests cannot catch what only the compiler rejects (a plain module global
inside @triton.jit, say) nor see registers; this can, and the last test shows it does.
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the Triton kernels need the triton package (Linux wheels)")

from rere.kernels import aot  # noqa: E402
from rere.kernels.beam_topk import K_PADS, k_pad_for  # noqa: E402
from rere.kernels.launch import STREAM_BLOCKS  # noqa: E402
from rere.kernels.launch_cases import LOGITS_DTYPES  # noqa: E402

ARCHS = (80, 90)


@pytest.fixture(scope="session")
def report() -> aot.Report:
    return aot.check(ARCHS)


def test_every_kernel_compiles_for_every_target(report):
    errors = [r for r in report.results if r.error]
    assert not errors, "\n".join(report.failures)
    assert len(report.results) == report.launches * len(ARCHS)
    assert {r.arch for r in report.results} == set(ARCHS)


def test_no_kernel_spills_registers(report):
    spilled = [r for r in report.results if r.spills]
    assert not spilled, "\n".join(report.failures)
    assert all(r.registers and r.registers <= 128 for r in report.results)


def test_every_kernel_is_launched_by_some_case(report):
    assert report.uncovered == [], report.failures


def _configs(report, kernel: str, key: str) -> set:
    return {(dict(p.split("=") for p in r.config.split())[key], r.dtypes.split(",")[0], r.arch)
            for r in report.results if r.kernel.endswith(":" + kernel)}


def test_every_dispatcher_choice_is_compiled(report):
    """Each register width and streaming block, with each logits dtype, on each target."""
    dtypes = {str(d).removeprefix("torch.") for d in LOGITS_DTYPES}
    for kernel in ("_beam_row_kernel", "_beam_merge_kernel"):
        assert _configs(report, kernel, "K_PAD") == {(str(w), d, a) for w in K_PADS for d in dtypes for a in ARCHS}
    assert {w for w, _, _ in _configs(report, "_beam_topk_kernel", "K_PAD")} == {str(w) for w in K_PADS}
    for kernel, key in (("_selective_log_softmax_fwd_kernel", "BLOCK_V"), ("_selective_log_softmax_bwd_kernel", "BLOCK_V"),
                        ("_chunk_lse_kernel", "BLOCK"), ("_chunk_grad_kernel", "BLOCK")):
        assert _configs(report, kernel, key) == {(str(b), d, a) for b in STREAM_BLOCKS for d in dtypes for a in ARCHS}


def test_fifty_beam_step_compiles_without_spills(report):
    """Evaluation's 50 beams (k = 100): the configuration that spilled 208-380 bytes when the
    merge shared one kernel with the vocabulary pass."""
    width = str(k_pad_for(100))
    step = [r for r in report.results
            if ":_beam_" in r.kernel and f"K_PAD={width}" in r.config.split() and "beams=1" not in r.specialised]
    assert {r.kernel.split(":")[1] for r in step} >= {"_beam_row_kernel", "_beam_merge_kernel"}
    assert all(not r.error and not r.spills for r in step)


def test_the_check_fails_on_a_plain_global_and_on_a_spill():
    here = Path(__file__).resolve().parent
    pointer = {"tensor": "float32", "aligned": True}
    launches = [
        {"module": "aot_faulty_kernels", "name": "plain_global_kernel", "args": [pointer], "kwargs": {}},
        {"module": "aot_faulty_kernels", "name": "spilling_kernel", "args": [pointer],
         "kwargs": {"BLOCK": 1024, "num_warps": 1, "maxnreg": 32}},
    ]
    report = aot.check((90,), launches=launches, jobs=1, extra_path=str(here))
    by_name = {r.kernel.split(":")[1]: r for r in report.results}
    assert "SCALE" in by_name["plain_global_kernel"].error
    assert by_name["spilling_kernel"].spills and not by_name["spilling_kernel"].error
    assert len(report.failures) >= 2
    # None of rere's own kernels was launched here: the coverage check must name them.
    assert "rere.kernels.beam_step:_beam_row_kernel" in report.uncovered
