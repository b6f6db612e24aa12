"""The demo's results: the table of the four methods with the paired intervals
(OUT/results.md, OUT/results.json), the settings of each stage in a line, the share of
ReRe's rollout groups that held the target, and the wall time of each stage."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rere.demo.presets import DemoSettings
from rere.files import read_json, write_atomically, write_json

TABLE_KS = (5, 10)
COMPARED_K = 10  # the paired intervals are of HR@10 and NDCG@10
ROWS = {"popularity": "popularity", "sasrec": "SASRec", "sft": "SFT", "rere": "SFT + ReRe"}
# (label, baseline row, compared row): the differences the demo reports with their intervals
COMPARISONS = (("SFT - popularity", "popularity", "sft"), ("(SFT + ReRe) - SFT", "sft", "rere"))
EVALUATED = {"popularity": "popularity", "sasrec": "sasrec", "sft": "sft-eval", "rere": "rere-eval"}


def write_results(out: Path, settings: DemoSettings, origin: dict, timings: Timings, stages: list[str],
                  seconds: float) -> dict:
    """The table of the four rows and the paired intervals, written as OUT/results.md and
    OUT/results.json, and printed."""
    from rere.comparison import as_json, compare_rankings
    from rere.data import Dataset
    from rere.metrics import metrics_table

    metrics = {ROWS[key]: read_json(out / folder / "metrics.json") for key, folder in EVALUATED.items()}
    counts = {name: m["examples"] for name, m in metrics.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"the rows were scored on different numbers of examples ({counts}): delete {out} "
                         "and run the demo again")
    dataset = Dataset.load(out / "data")
    differences = {label: as_json(compare_rankings(out / EVALUATED[a], out / EVALUATED[b], catalog=dataset.catalog,
                                                   k=COMPARED_K))
                   for label, a, b in COMPARISONS}
    sft, rere = read_json(out / "sft" / "result.json"), read_json(out / "rere" / "result.json")
    columns = [f"{m}@{k}" for k in TABLE_KS for m in ("HR", "NDCG")]
    described = describe_stages(settings, stages)
    hit_rate = rere["in_group_hit_rate"]
    results = {
        "table": {name: {c: m[c] for c in columns} for name, m in metrics.items()},
        "differences": differences,
        "examples": counts[ROWS["sft"]], "base_model": sft["base_model"], **origin, "dataset": dataset.source,
        "rere_steps": rere["steps"], "rere_steps_with_signal": rere["steps_with_signal"],
        "rere_in_group_hit_rate": hit_rate,
        "stage_seconds": {name: timings.seconds.get(name) for name in described},
        "total_stage_seconds": sum(timings.seconds.get(name, 0.0) for name in described),
        "this_run_seconds": seconds, "stages": described, "settings": dataclasses.asdict(settings),
    }
    write_json(out / "results.json", results)
    lines = [f"# rere demo: {dataset.source}, {results['examples']:,} test examples", "",
             metrics_table(metrics, TABLE_KS), "",
             f"Paired differences on the same {results['examples']:,} examples, with bootstrap 95% intervals "
             "(`rere compare`; an interval that excludes 0 is a difference the sample supports):", "",
             "| difference | HR@10 | NDCG@10 | supported |", "|---|---:|---:|---|",
             *(_difference_row(label, rows) for label, rows in differences.items()), "",
             f"LLM: {sft['base_model']}. ReRe: the target was among the {settings.grpo.num_generations} beams of "
             f"{hit_rate['mean']:.1%} of the rollout prompts (per step {hit_rate['min']:.0%}-{hit_rate['max']:.0%}); "
             f"{rere['steps_with_signal']} of {rere['steps']} steps had such a group (a group without the target "
             "has no gradient).", "",
             "| stage | wall time | settings |", "|---|---:|---|",
             *(f"| {name} | {timings.get(name)} | {text} |" for name, text in described.items()),
             f"| total | {results['total_stage_seconds']:.0f} s | |"]
    write_atomically(out / "results.md", "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines[2:]))
    print(f"\nwrote {out}/results.md and results.json (this run: {seconds:.0f} s)")
    return results


def _difference_row(label: str, rows: list[dict]) -> str:
    """One line of the differences table: each metric's difference and interval."""
    by_metric = {row["metric"]: row for row in rows}
    cells = [f"{r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]"
             for r in (by_metric[f"hr@{COMPARED_K}"], by_metric[f"ndcg@{COMPARED_K}"])]
    ndcg = by_metric[f"ndcg@{COMPARED_K}"]
    verdict = "higher" if ndcg["low"] > 0 else "lower" if ndcg["high"] < 0 else "no difference shown"
    return f"| {label} | {cells[0]} | {cells[1]} | NDCG@10: {verdict} |"


def describe_stages(settings: DemoSettings, stages: list[str]) -> dict[str, str]:
    """One line of settings per stage, for results.md (results.json has all of them)."""
    import torch

    sft, grpo = settings.sft, settings.grpo
    prompts = f", prompts <= {settings.max_prompt_tokens} tokens" if settings.max_prompt_tokens else ""

    def precision(bf16: bool | None) -> str:  # None: the trainers' default, bf16 autocast on CUDA
        return "bf16 autocast" if (torch.cuda.is_available() if bf16 is None else bf16) else "fp32"

    rows = "all" if sft.train_examples is None else f"{sft.train_examples:,}"
    evaluation = f"{settings.eval_beams} beams{prompts}, {'bf16' if settings.eval_bf16 else 'fp32'}"
    tested = "all test rows" if settings.eval_examples is None else (
        f"{settings.eval_examples:,} test rows, a seeded random sample")
    data = tested + (f"; semantic IDs: {settings.sid_levels} levels (if absent)" if settings.model == "compact" else "")
    described = {
        "data": data,
        "popularity": f"ranks {settings.eval_beams}",
        "sasrec": ", ".join(f"{k}={v}" for k, v in settings.sasrec.items()) or "SASRecConfig defaults",
        "model": ", ".join(f"{k}={v}" for k, v in settings.compact.items()) or "CompactModelConfig defaults",
        "sft": f"{rows} training rows, {_length(sft.max_steps, sft.epochs)}, batch {sft.batch_size}, lr {sft.lr:g}"
               f"{prompts}, {precision(sft.bf16)}{_validation(sft)}",
        "sft-eval": evaluation,
        "rere": f"G={grpo.num_generations}, {grpo.prompts_per_step} prompts/step, "
                f"{_length(grpo.max_steps, grpo.epochs)}, lr {grpo.lr:g}, beta {grpo.beta:g}, {grpo.loss_type} loss, "
                f"rewards {'+'.join(grpo.rewards)}{prompts}, {precision(grpo.bf16)}{_validation(grpo)}",
        "rere-eval": evaluation,
    }
    return {name: described[name] for name in stages}


def _length(max_steps: int | None, epochs: float) -> str:
    """A run's length: its steps (`max_steps` ends it, whatever `epochs` would give) or epochs."""
    return f"{max_steps} steps" if max_steps is not None else f"{epochs:g} epoch(s)"


def _validation(config) -> str:
    """How a trainer's model was picked: best of its validations, or the last one."""
    if not config.eval_examples:
        return ", no validation (the last model)"
    return f", best/ by validation NDCG@10 on {config.eval_examples:,} rows every {config.eval_every} steps"


def in_group_hit_rates(run: Path) -> list[float]:
    """Per GRPO step of the run in `run`: the share of its prompts whose rollout group held the
    target (only those groups have a gradient)."""
    from rere.trainer.metrics_log import read_metrics

    return [r["in_group_hit_rate"] for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "train"]


class Timings:
    """Wall time of each stage in OUT/timings.json, kept across runs."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = read_json(path) if path.exists() else {}

    def record(self, name: str, seconds: float) -> None:
        self.seconds[name] = seconds
        write_json(self.path, self.seconds)

    def get(self, name: str) -> str:
        return f"{self.seconds[name]:.0f} s" if name in self.seconds else "time not recorded"
