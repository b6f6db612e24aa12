"""Compile every Triton kernel of `rere.kernels` ahead of time for GPU targets, without a GPU,
and read ptxas's report: registers, spill stores and loads, stack, shared memory.

    python -m rere.kernels.aot                 # sm_80 and sm_90, no GPU needed
    python -m rere.kernels.aot --arch 90 --json report.json
    python -m rere.kernels.aot --device        # the GPU of this machine

Exit status 1 on a compile error, a spill, or a kernel that no launch reached.

How: (1) `record`: a process under Triton's interpreter runs `launch_cases()` (every op at
every launch configuration its dispatcher can choose) on CPU tensors and records each
kernel launch: the kernel, its arguments (tensor dtypes and 16-byte alignment, integer
values, floats) and keywords (constexprs, num_warps, compiler options). (2) `compile`: a
process without the interpreter, one per target, passes the same arguments through
Triton's own JIT specialisation (the binder `kernel[grid](...)` uses: integer 1 as a
constant, divisibility by 16, pointer dtypes) and compiles each distinct launch with
`triton.compile` for that target, in a fresh cache so that ptxas runs and prints its
`-v` report. The Triton wheel bundles ptxas; no CUDA toolkit or driver is needed.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_ARCHS = (80, 90)  # A100, H100/H200


@dataclass
class CompileResult:
    """One recorded launch compiled for one target."""

    kernel: str  # module:name
    config: str  # the launch's constexprs and options, e.g. "K_PAD=128 BLOCK=1024 num_warps=4"
    # integer arguments Triton made constants (it specialises on a value of 1), e.g. "beams=1"
    specialised: str
    dtypes: str  # the pointer arguments' dtypes, in order, each once: "bfloat16,int64,float32"
    arch: int
    registers: int | None = None
    spill_stores: int | None = None  # bytes
    spill_loads: int | None = None  # bytes
    stack: int | None = None  # bytes of stack frame
    shared: int | None = None  # bytes of shared memory
    seconds: float = 0.0
    error: str | None = None

    @property
    def spills(self) -> bool:
        return bool(self.spill_stores or self.spill_loads)


@dataclass
class Report:
    results: list[CompileResult] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)  # kernels no launch reached
    launches: int = 0  # distinct recorded launches

    @property
    def failures(self) -> list[str]:
        out = [f"{r.kernel} [{r.config} {r.specialised}; {r.dtypes}] sm_{r.arch}: {r.error}" for r in self.results
               if r.error]
        out += [f"{r.kernel} [{r.config} {r.specialised}; {r.dtypes}] sm_{r.arch}: spills {r.spill_stores} bytes stored, "
                f"{r.spill_loads} loaded ({r.registers} registers)" for r in self.results if r.spills]
        out += [f"{name}: no launch case reaches it (add one to rere/kernels/launch_cases.py)"
                for name in self.uncovered]
        return out

    def to_json(self) -> dict:
        return {"launches": self.launches, "uncovered": self.uncovered,
                "results": [asdict(r) for r in self.results], "failures": self.failures}

    def markdown(self) -> str:
        """One row per kernel and configuration, one column per target: registers / spill."""
        archs = sorted({r.arch for r in self.results})
        rows: dict[tuple[str, str, str], dict[int, CompileResult]] = {}
        for r in self.results:
            rows.setdefault((r.kernel.split(":")[-1], f"{r.config} {r.specialised}".strip(), r.dtypes), {})[r.arch] = r
        head = "| kernel | configuration | pointer dtypes | " + " | ".join(
            f"sm_{a} registers / spill B / compile s" for a in archs) + " |"
        lines = [head, "|" + " --- |" * (3 + len(archs))]
        for (name, config, dtypes), by_arch in sorted(rows.items()):
            cells = []
            for a in archs:
                r = by_arch.get(a)
                cells.append("-" if r is None else f"error: {r.error.splitlines()[0][:60]}" if r.error else
                             f"{r.registers} / {(r.spill_stores or 0) + (r.spill_loads or 0)} / {r.seconds:.1f}")
            lines.append(f"| {name} | {config} | {dtypes} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- recording
def _encode(value):
    import torch

    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "aligned": value.data_ptr() % 16 == 0}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record a kernel argument of type {type(value).__name__}")


def record_launches() -> list[dict]:
    """Run every launch case under the interpreter (this process must have TRITON_INTERPRET=1
    set before rere.kernels was imported) and return the distinct launches it made."""
    from triton.runtime.interpreter import InterpretedFunction

    from rere.kernels.launch_cases import launch_cases

    seen: dict[str, dict] = {}
    original = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        launch = {"module": self.fn.__module__, "name": self.fn.__name__,
                  "args": [_encode(a) for a in args], "kwargs": {k: _encode(v) for k, v in sorted(kwargs.items())}}
        seen.setdefault(json.dumps(launch, sort_keys=True), launch)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run
    try:
        for label, call in launch_cases():
            try:
                call()
            except Exception as error:  # name the case: the interpreter's own message does not
                raise RuntimeError(f"launch case {label!r} failed under the interpreter: {error}") from error
    finally:
        InterpretedFunction.run = original
    return list(seen.values())


# ----------------------------------------------------------------------------- compiling
_PTXAS_USAGE = re.compile(r"Used (\d+) registers")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _decode(value):
    import torch

    if isinstance(value, dict) and "tensor" in value:
        base = torch.empty(64, dtype=getattr(torch, value["tensor"]))
        return base if value["aligned"] else base[1:]
    return value


def _config(kwargs: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in kwargs.items())


def compile_launch(launch: dict, target) -> CompileResult:
    """Compile one recorded launch for `target` (a triton GPUTarget) as the JIT would."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = getattr(importlib.import_module(launch["module"]), launch["name"])
    args = [_decode(a) for a in launch["args"]]
    kwargs = dict(launch["kwargs"])
    dtypes = ",".join(dict.fromkeys(a["tensor"] for a in launch["args"] if isinstance(a, dict)))
    ones = [p.name for p, a in zip(kernel.params, args) if not p.is_constexpr and type(a) is int and a == 1]
    result = CompileResult(f"{launch['module']}:{launch['name']}", _config(kwargs), " ".join(f"{n}=1" for n in ones),
                           dtypes, int(target.arch))
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
        knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed once the cubin is built
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
    except Exception as error:  # the report lists every failure; the caller decides
        result.error = f"{type(error).__name__}: {error}".strip()
        return result
    finally:
        result.seconds = round(time.perf_counter() - start, 2)
    text = log.getvalue()
    usage, frame = _PTXAS_USAGE.search(text), _PTXAS_FRAME.search(text)
    if usage is None or frame is None:
        result.error = f"no ptxas report in the compiler's output (a cached cubin?): {text[-300:]!r}"
        return result
    result.registers = int(usage.group(1))
    result.stack, result.spill_stores, result.spill_loads = (int(g) for g in frame.groups())
    result.shared = int(compiled.metadata.shared)
    return result


def _kernel_modules() -> list:
    import rere.kernels

    return [importlib.import_module(f"rere.kernels.{m.name}") for m in pkgutil.iter_modules(rere.kernels.__path__)]


def uncovered_kernels(launches: list[dict]) -> list[str]:
    """JIT functions defined in rere.kernels that no recorded launch compiles, directly or as
    a function one of them calls."""
    from triton.runtime.jit import JITFunction

    defined = {f"{module.__name__}:{name}" for module in _kernel_modules() for name, obj in vars(module).items()
               if isinstance(obj, JITFunction) and obj.fn.__module__ == module.__name__}
    reached: set[str] = set()
    todo = [getattr(importlib.import_module(l["module"]), l["name"]) for l in launches]
    while todo:
        fn = todo.pop()
        key = f"{fn.fn.__module__}:{fn.fn.__name__}"
        if key in reached:
            continue
        reached.add(key)
        todo += [fn.fn.__globals__[n] for n in fn.fn.__code__.co_names
                 if isinstance(fn.fn.__globals__.get(n), JITFunction)]
    return sorted(defined - reached)


def _require_report_hooks() -> None:
    """The two Triton internals this check reads exist in the Triton it was written against
    (3.9); triton 3.4, the oldest the kernels accept, has neither."""
    import triton
    from triton import knobs
    from triton.runtime.jit import JITFunction

    if not (hasattr(JITFunction, "_pack_args") and hasattr(knobs.nvidia, "dump_ptxas_log")):
        raise RuntimeError(f"rere.kernels.aot needs triton's JIT packing and ptxas-log hooks (triton 3.9 has "
                           f"them); this is triton {triton.__version__}: pip install -U triton")


def compile_all(launches: list[dict], target, cache: str | None = None) -> list[CompileResult]:
    """Every launch for one target, in a fresh Triton cache (a cached kernel prints no ptxas
    report): a temporary one, or `cache`, an empty folder that later processes can point
    TRITON_CACHE_DIR at so that their launches of the same kernels compile nothing."""
    _require_report_hooks()
    with tempfile.TemporaryDirectory(prefix="rere-aot-") as temporary:
        os.environ["TRITON_CACHE_DIR"] = cache or temporary
        return [compile_launch(launch, target) for launch in launches]


# ----------------------------------------------------------------------------- driver
def _run_stage(stage: list[str], interpret: bool, extra_path: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", "rere.kernels.aot", *stage], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, what: str) -> None:
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"rere.kernels.aot: the {what} process failed (exit {process.returncode}):\n"
                           f"{(out + err)[-4000:]}")


def check(archs: tuple[int, ...] = DEFAULT_ARCHS, *, device: bool = False, launches: list[dict] | None = None,
          jobs: int | None = None, cache: str | None = None, extra_path: str | None = None) -> Report:
    """Record (unless `launches` is given) and compile for every arch, or for this machine's
    GPU with `device=True`, in `jobs` parallel processes (default: one a CPU core, at least
    one a target), into `cache` if given (see `compile_all`). `extra_path` is prepended to the
    child processes' PYTHONPATH (launches of kernels outside the package, in tests)."""
    with tempfile.TemporaryDirectory(prefix="rere-aot-") as work:
        work = Path(work)
        records = work / "launches.json"
        if launches is None:
            _finish(_run_stage(["record", "--out", str(records)], interpret=True), "recording")
            launches = json.loads(records.read_text())
        else:
            records.write_text(json.dumps(launches))
        targets = ["device"] if device else [str(a) for a in archs]
        shards = max(1, (jobs or os.cpu_count() or 1) // len(targets))
        processes = {}
        for t in targets:
            for shard in range(shards):
                out = work / f"{t}-{shard}.json"
                stage = ["compile", "--launches", str(records), "--target", t, "--out", str(out),
                         "--shard", f"{shard}/{shards}"] + (["--cache", cache] if cache else [])
                if not processes:
                    stage.append("--find-uncovered")
                processes[out] = _run_stage(stage, interpret=False, extra_path=extra_path)
        for out, process in processes.items():
            _finish(process, f"compile ({out.stem})")
        report = Report(launches=len(launches))
        for out in processes:
            part = json.loads(out.read_text())
            report.results += [CompileResult(**r) for r in part["results"]]
            report.uncovered += part["uncovered"]  # one process looks (--find-uncovered); the others say []
    return report


def _target(name: str):
    from triton.backends.compiler import GPUTarget

    if name == "device":
        from triton.runtime import driver

        return driver.active.get_current_target()
    return GPUTarget("cuda", int(name), 32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rere.kernels.aot", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage")
    rec = sub.add_parser("record", help="(internal) record the launches, under TRITON_INTERPRET=1")
    rec.add_argument("--out", required=True)
    comp = sub.add_parser("compile", help="(internal) compile recorded launches for one target")
    comp.add_argument("--launches", required=True)
    comp.add_argument("--target", required=True, help="an sm number (80, 90) or 'device'")
    comp.add_argument("--out", required=True)
    comp.add_argument("--shard", default="0/1", help="I/N: compile every N-th launch from the I-th")
    comp.add_argument("--cache")
    comp.add_argument("--find-uncovered", action="store_true", help="also list the kernels no launch reaches")
    parser.add_argument("--arch", type=int, action="append", help="sm number; repeat (default: 80 and 90)")
    parser.add_argument("--device", action="store_true", help="compile for this machine's GPU instead")
    parser.add_argument("--jobs", type=int, help="compile processes (default: one a CPU core)")
    parser.add_argument("--cache", help="an empty folder to compile into (later runs with TRITON_CACHE_DIR set to it "
                                        "find these kernels compiled)")
    parser.add_argument("--json", help="write the whole report here")
    args = parser.parse_args(argv)

    if args.stage == "record":
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("record runs under TRITON_INTERPRET=1 (`check` starts it so)")
        Path(args.out).write_text(json.dumps(record_launches()))
        return 0
    if args.stage == "compile":
        launches = json.loads(Path(args.launches).read_text())
        shard, shards = (int(n) for n in args.shard.split("/"))
        results = compile_all(launches[shard::shards], _target(args.target), args.cache)
        uncovered = uncovered_kernels(launches) if args.find_uncovered else []
        Path(args.out).write_text(json.dumps({"results": [asdict(r) for r in results], "uncovered": uncovered}))
        return 0

    started = time.perf_counter()
    if args.cache and Path(args.cache).exists() and any(Path(args.cache).iterdir()):
        parser.error(f"--cache {args.cache}: the folder must be empty (a cached kernel prints no ptxas report)")
    report = check(tuple(args.arch or DEFAULT_ARCHS), device=args.device, jobs=args.jobs, cache=args.cache)
    print(report.markdown())
    print(f"\n{report.launches} distinct launches, {len(report.results)} compilations in "
          f"{time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=1))
    for failure in report.failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
