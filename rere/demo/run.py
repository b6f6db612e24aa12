"""`run_demo`: the demo's stages in order, each skipped when its result is already there
and redone when a stage it reads was redone, then the results."""
from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rere.demo.base_model import load_base_model
from rere.demo.presets import MODELS, DemoSettings, preset
from rere.demo.results import ROWS, Timings, write_results
from rere.demo.stages import (init_model, load_compact_model, prepare_data, rere_model, run_baseline, run_evaluation,
                              run_rere, run_sft, template_of)


def run_demo(out, *, gpu: bool = False, model: str | None = None, source: str = "ml-100k", data: str | None = None,
             settings: DemoSettings | None = None, base_model: Callable[[], tuple] | None = None) -> dict:
    """Run (or finish) the demo into folder `out` and return what results.json holds.

    `settings` default to `preset(model, gpu)`; `data` (a prepared dataset folder) replaces
    MovieLens `source`; `base_model() -> (model, tokenizer, description)` is the model SFT
    starts from with smollm2 (default: SmolLM2-135M-Instruct, see `load_base_model`)."""
    import torch

    from rere.cpu_threads import use_free_cores

    if gpu and not torch.cuda.is_available():
        raise ValueError("--gpu needs a CUDA GPU (none found); without --gpu the demo runs its CPU settings")
    settings = settings or preset(model, gpu)
    if settings.model not in MODELS:
        raise ValueError(f"DemoSettings.model must be one of {MODELS}, got {settings.model!r}")
    if data is not None and not (Path(data) / "dataset.json").exists():
        raise FileNotFoundError(f"--data {data}: no dataset.json there (make one with `rere prepare`)")
    if settings.eval_bf16 is None:
        settings = dataclasses.replace(settings, eval_bf16=settings.model != "compact" and native_bf16())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from rere.files import check_settings

    origin = {"data": str(Path(data).resolve())} if data is not None else {"source": source}
    check_settings(out / "settings.json", {**origin, **dataclasses.asdict(settings)}, "a demo")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"rere demo: {out}/ on {device} ({use_free_cores()}, "
          f"{'bf16' if settings.eval_bf16 else 'fp32'} evaluation), {settings.model} model, "
          f"{'GPU' if gpu else 'CPU'} settings", flush=True)
    started = time.perf_counter()
    timings = Timings(out / "timings.json")
    dataset = out / "data"
    compact = settings.model == "compact"
    if compact:
        start_model = lambda: load_compact_model(out / "model")  # noqa: E731
    else:
        start_model = base_model or load_base_model
    stages = [  # name, folder it writes, the file there that marks it done, stages it reads, work
        _Stage("data", dataset, "dataset.json", (),
               lambda: prepare_data(data, source, out / "prepared", dataset, settings)),
        _Stage("popularity", out / "popularity", "metrics.json", ("data",),
               lambda: run_baseline("popularity", dataset, out / "popularity", settings)),
        _Stage("sasrec", out / "sasrec", "metrics.json", ("data",),
               lambda: run_baseline("sasrec", dataset, out / "sasrec", settings)),
        *([_Stage("model", out / "model", "config.json", ("data",),
                  lambda: init_model(dataset, out / "model", settings))] if compact else []),
        _Stage("sft", out / "sft", "result.json", ("data", "model"),
               lambda: run_sft(dataset, out / "sft", settings, start_model, template_of(out, settings))),
        _Stage("sft-eval", out / "sft-eval", "metrics.json", ("sft",),
               lambda: run_evaluation(out / "sft" / "best", dataset, out / "sft-eval", settings, ROWS["sft"],
                                      template_of(out, settings))),
        _Stage("rere", out / "rere", "result.json", ("sft",),
               lambda: run_rere(out / "sft" / "best", dataset, out / "rere", settings, template_of(out, settings))),
        _Stage("rere-eval", out / "rere-eval", "metrics.json", ("rere",),
               lambda: run_evaluation(rere_model(out / "rere"), dataset, out / "rere-eval", settings, ROWS["rere"],
                                      template_of(out, settings))),
    ]
    ran: set[str] = set()
    for number, stage in enumerate(stages, start=1):
        label = f"[{number}/{len(stages)}] {stage.name}"
        stale = bool(ran.intersection(stage.reads))  # an input was just remade: the old output is stale
        if (stage.folder / stage.done).exists() and not stale:
            print(f"{label}: done before ({timings.get(stage.name)}), skipped: {stage.folder}", flush=True)
            continue
        if stale:
            shutil.rmtree(stage.folder, ignore_errors=True)
        print(f"{label} ...", flush=True)
        stage_started = time.perf_counter()
        stage.work()
        timings.record(stage.name, time.perf_counter() - stage_started)
        ran.add(stage.name)
        print(f"{label}: done in {timings.get(stage.name)}", flush=True)
    return write_results(out, settings, origin, timings, [s.name for s in stages], time.perf_counter() - started)


def native_bf16() -> bool:
    """Whether the models run in bf16 natively here: on CUDA, or on a CPU with AVX512-BF16."""
    import torch

    # a private torch helper, hence the guard: a torch without it gets fp32
    cpu_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return torch.cuda.is_available() or bool(cpu_bf16())


@dataclass(frozen=True)
class _Stage:
    name: str
    folder: Path  # what the stage writes; removed before it runs again after a stage it reads
    done: str  # the file in `folder` whose presence says that the stage finished
    reads: tuple[str, ...]  # the stages whose output it reads
    work: Callable[[], None]
