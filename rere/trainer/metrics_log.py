"""The training run's metrics: one JSON line per logged step, TensorBoard scalars, and a plot.

run_dir/metrics.jsonl holds one object per `log` call,
    {"step": 120, "time": 1718000000.0, "split": "train", "reward": 0.31, "kl": 0.002, ...}
flushed as it is written, so the file is readable while the run goes on and an interrupted
run loses at most the line being written. JSON has no NaN or infinity: a non-finite value
is written as null (TensorBoard still receives the float itself).
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from rere.files import write_atomically

DEFAULT_PANELS = (("train", "reward"), ("train", "kl"), ("train", "in_group_hit_rate"), ("valid", "ndcg@10"))
_RESERVED = ("step", "time", "split")


class MetricsLog:
    """Appends metrics to `run_dir/metrics.jsonl` (and TensorBoard under `run_dir/tensorboard`).

    `resume_step`: the step of the checkpoint a run resumes from; lines (and TensorBoard
    events) after it were logged by the interrupted run past that checkpoint and are dropped,
    so that the resumed run does not log those steps twice. `enabled=False` (ranks other
    than 0) makes every method do nothing.
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True, enabled: bool = True,
                 resume_step: int | None = None):
        self.enabled = enabled
        self._file = None
        self._writer = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            _drop_after(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        writer_class = _summary_writer_class() if tensorboard else None
        if writer_class is not None:
            purge = None if resume_step is None else resume_step + 1
            self._writer = writer_class(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        clash = [name for name in metrics if name in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the record's own fields {_RESERVED}")
        values = {name: _number(name, value) for name, value in metrics.items()}
        record = {"step": int(step), "time": time.time(), "split": split,
                  **{name: value if math.isfinite(value) else None for name, value in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(jsonl_path: str | os.PathLike) -> list[dict]:
    """The records of a metrics file, in order."""
    path = Path(jsonl_path)
    return [_parse(line, path, number) for number, line in _complete_lines(path) if line]


def plot_metrics(jsonl_path: str | os.PathLike, png_path: str | os.PathLike,
                 panels: Iterable[tuple[str, str]] = DEFAULT_PANELS) -> Path:
    """One PNG with a (split, metric) curve over steps per panel; a panel without data says so."""
    # Imported here: only plotting needs matplotlib. Figure with the Agg canvas draws without
    # pyplot, so neither a display nor the process-wide backend choice is involved.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = list(panels)
    series = defaultdict(list)
    for record in read_metrics(jsonl_path):
        for name, value in record.items():
            if name not in _RESERVED and value is not None:
                series[record["split"], name].append((record["step"], value))
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5 * columns, 3.5 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (split, name) in zip(axes, panels):
        ax.set_title(f"{split} {name}")
        ax.set_xlabel("step")
        points = sorted(series.get((split, name), []))
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(png_path, lambda f: figure.savefig(f, format="png", dpi=100))
    return png_path


@functools.cache
def _summary_writer_class():
    """TensorBoard's SummaryWriter, or None (with one warning per process) when it is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        warnings.warn(f"TensorBoard logging is off ({error}); metrics.jsonl is still written")
        return None
    return SummaryWriter


def _number(name: str, value) -> float:
    """A metric as a Python number: tensors and NumPy scalars through .item()."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {name!r}: {value!r} is not a number")
    return value


def _parse(line: str, path: Path, number: int) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {number} is not JSON: {error}") from error


def _complete_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every line ended by a newline: a last line without one is being
    written, or was cut by a crash."""
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()
    return list(enumerate(lines, 1))


def _drop_after(path: Path, step: int) -> None:
    """Rewrite the file (atomically) without the records of steps after `step`, nor a cut line."""
    kept = [line + "\n" for number, line in _complete_lines(path)
            if line and _parse(line, path, number)["step"] <= step]
    write_atomically(path, kept)
