"""Everything that needs a CUDA GPU, in one go, within a time budget (default 8 minutes):

    python benchmarks/gpu_checks.py OUT_DIR [--budget 480]

Steps, in order of value; each runs in its own process with a timeout of what is left of
the budget, and a step whose estimate no longer fits is skipped and reported as such:

1. `python -m rere.kernels.aot --device`: every kernel at every launch configuration,
   compiled for this GPU (registers, spills) before anything is timed;
2. `pytest -m gpu`: the GPU-only tests (sync-free decode, full-size steps, 151,936-token
   log-softmax, ...);
3. the kernel, sampler and log-softmax test files with their Triton kernels compiled on
   this GPU (on the CPU they run under TRITON_INTERPRET);
4. the beam-step kernel benchmark (16 and 50 beams), 5. the selective log-softmax
   benchmark, 6. the sampler benchmark (no HF comparison), 7. the GRPO-step benchmark.

Writes three files to OUT_DIR: gpu_checks.json (every step: status, seconds, exit code,
the last lines of its log, its own JSON), gpu_checks.md (a section for
benchmarks/RESULTS.md) and gpu_checks_logs.tar.gz (each step's whole log and JSON, also
left in --work). The compile check fills a fresh Triton cache that every later step uses,
so the kernels compile once, before the timed parts.

Estimates (seconds) are from the parts, not from a run of this script (none has run on a
GPU yet): the compile check took 20 s to record and 196 compilations in 120 s on 2 CPU
cores here, so ~40 s for one target on a 16-core GPU host; the rest are guesses from the
CPU runs of the same suites and the sizes chosen below. Replace them with measured times
after the first GPU run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
KERNEL_TESTS = ["tests/test_beam_kernels.py", "tests/test_selective_log_softmax.py", "tests/test_beam_search.py",
                "tests/test_sample.py", "tests/test_sampler_adapters.py"]


@dataclass
class Step:
    name: str
    what: str
    command: list[str]
    estimate_s: int
    json_name: str | None = None  # the JSON file the step writes under OUT_DIR
    status: str = "not run"
    seconds: float = 0.0
    exit_code: int | None = None
    figures: dict | list | None = field(default=None)
    tail: str = ""


def steps(out: Path, cache: Path) -> list[Step]:
    return [
        Step("compile", "every kernel compiled for this GPU: registers, spills", [
            PY, "-m", "rere.kernels.aot", "--device", "--cache", str(cache), "--json", str(out / "aot.json")], 60,
            "aot.json"),
        Step("gpu-tests", "pytest -m gpu", [
            PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"], 90),
        Step("kernel-tests", "kernel, sampler and log-softmax tests, Triton compiled on the GPU", [
            PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", *KERNEL_TESTS], 120),
        Step("bench-kernels", "beam step, 16 and 50 beams, bf16 and fp32", [
            PY, "benchmarks/gpu_kernels.py", "--rows", "256", "1024", "4096", "--beams", "16", "50",
            "--json", str(out / "gpu_kernels.json")], 60, "gpu_kernels.json"),
        Step("bench-log-softmax", "selective log-softmax, 151,936 tokens", [
            PY, "benchmarks/gpu_selective_log_softmax.py", "--tokens", "4096", "16384",
            "--json", str(out / "gpu_selective_log_softmax.json")], 45, "gpu_selective_log_softmax.json"),
        Step("bench-sampler", "constrained beam search, Qwen2-0.5B shape, 1M items", [
            PY, "benchmarks/gpu_sampler.py", "--prompts", "32", "--skip-hf",
            "--json", str(out / "gpu_sampler.json")], 60, "gpu_sampler.json"),
        Step("bench-grpo-step", "one GRPO step, rere vs the reference recipe", [
            PY, "benchmarks/gpu_grpo_step.py", "--rounds", "1", "--json", str(out / "gpu_grpo_step.json")],
            90, "gpu_grpo_step.json"),
    ]


def run(step: Step, out: Path, left: float, cache: Path | None = None) -> None:
    log = out / f"{step.name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **({"TRITON_CACHE_DIR": str(cache)} if cache else {}))
    env.pop("TRITON_INTERPRET", None)
    started = time.perf_counter()
    with open(log, "w") as handle:
        try:
            done = subprocess.run(step.command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=left)
            step.exit_code = done.returncode
            step.status = "passed" if done.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            step.status = f"stopped at the budget ({left:.0f} s)"
    step.seconds = round(time.perf_counter() - started, 1)
    step.tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    if step.json_name and (out / step.json_name).exists():
        step.figures = json.loads((out / step.json_name).read_text())


def run_all(all_steps: list[Step], out: Path, budget: float, cache: Path | None = None) -> float:
    """Run the steps in order within `budget` seconds, logs and JSON into `out`, Triton's
    cache in `cache`; returns the seconds spent."""
    started = time.perf_counter()
    for step in all_steps:
        left = budget - (time.perf_counter() - started)
        if step.estimate_s > left:
            step.status = f"skipped: its estimate ({step.estimate_s} s) would overrun the {left:.0f} s left"
        else:
            print(f"[{time.perf_counter() - started:5.0f} s] {step.name}: {step.what}", flush=True)
            run(step, out, left, cache)
        print(f"        {step.status} ({step.seconds:.0f} s)\n{step.tail}", flush=True)
    return time.perf_counter() - started


def markdown(device: str, all_steps: list[Step], total: float) -> str:
    lines = [f"### GPU checks on {device} ({time.strftime('%Y-%m-%d')}, `benchmarks/gpu_checks.py`, "
             f"{total:.0f} s in all)", "", "| step | what | status | seconds |", "| --- | --- | --- | ---: |"]
    lines += [f"| {s.name} | {s.what} | {s.status} | {s.seconds:.0f} |" for s in all_steps]
    for s in all_steps:
        if s.status not in ("not run",) and not s.status.startswith("skipped"):
            last = [line for line in s.tail.splitlines() if line.strip()][-1:]
            if last:
                lines += ["", f"{s.name}: `{last[0].strip()[:200]}`"]
        rows = s.figures.get("rows") if isinstance(s.figures, dict) else None
        if rows and isinstance(rows, list) and isinstance(rows[0], dict):
            keys = list(rows[0])
            lines += ["", f"{s.name}:", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
            lines += ["| " + " | ".join(f"{r.get(k):.3g}" if isinstance(r.get(k), float) else str(r.get(k))
                                        for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_checks.json, gpu_checks.md and the logs' archive")
    parser.add_argument("--work", type=Path, help="folder for each step's log and JSON (default: OUT/steps)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all steps together")
    parser.add_argument("--only", nargs="+", help="run only these steps (by name)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_checks.py needs a CUDA GPU")
    device = torch.cuda.get_device_name()
    work = args.work or args.out / "steps"
    for folder in (args.out, work):
        folder.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="rere-gpu-checks-triton-"))
    all_steps = [s for s in steps(work, cache) if not args.only or s.name in args.only]
    total = run_all(all_steps, work, args.budget, cache)
    with tarfile.open(args.out / "gpu_checks_logs.tar.gz", "w:gz") as archive:
        archive.add(work, arcname="steps")
    (args.out / "gpu_checks.json").write_text(json.dumps(
        {"device": device, "seconds": round(total, 1), "steps": [vars(s) for s in all_steps]}, indent=1))
    (args.out / "gpu_checks.md").write_text(markdown(device, all_steps, total))
    print(f"\n{total:.0f} s in all; {args.out / 'gpu_checks.md'} holds the section for benchmarks/RESULTS.md")
    return 0 if all(s.status == "passed" for s in all_steps) else 1


if __name__ == "__main__":
    sys.exit(main())
