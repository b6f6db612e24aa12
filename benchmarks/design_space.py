"""ReRe's design space at CPU scale: which of its choices move NDCG@10 over the SFT model.

    rere demo -o DEMO [--data DIR]          # the data, the compact model, SFT (and one ReRe run)
    python benchmarks/design_space.py DEMO -o OUT [--seeds 0 1 2] [--steps 100] [--test-examples 2000]

Every variant starts from the demo's SFT model (DEMO/sft/best) and changes one thing of the
demo's ReRe settings (DEMO/settings.json): the rewards (rule only vs rule + ranking), the
rollouts (constrained beam search vs G independent samples), G (4, 8, 16) and the loss
type (grpo, bnpo, dr_grpo, dapo). Each runs once per seed (GRPO's data order and sampling),
and is tested with the demo's beam width (its eval_beams) on the same seeded sample of test
rows as SFT, popularity and SASRec (SASRec trained once per seed). Writes OUT/design_space.json and
OUT/design_space.md: per row the mean and standard deviation over seeds of HR@10 and
NDCG@10, the mean paired difference of NDCG@10 to SFT, how many seeds' paired bootstrap
95% intervals lie above / below 0, the share of rollout groups that held the target, and
the time per run. Finished runs are kept (OUT/VARIANT/seed-S/test/metrics.json): a killed
study continues where it stopped.

The study reports test figures by design; the demo's own settings were chosen on the
validation split before it ran (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from rere.demo.presets import EVAL_SAMPLE_SEED
from rere.demo.results import in_group_hit_rates
from rere.demo.stages import drop_checkpoints, run_command
from rere.files import write_json
from rere.trainer.grpo_config import GRPOConfig

# One factor changed from the base (the demo's settings: beam search, rule + ranking, G = 16, grpo).
VARIANTS = {
    "ReRe (beam, rule + ranking, G=16, grpo)": {},
    "rule reward only": {"rewards": ["rule"]},
    "sampled rollouts (G=16)": {"rollout": "sample"},
    "G=4": {"num_generations": 4},
    "G=8": {"num_generations": 8},
    "loss bnpo": {"loss_type": "bnpo"},
    "loss dr_grpo": {"loss_type": "dr_grpo"},
    "loss dapo (clip 0.2 / 0.28)": {"loss_type": "dapo", "epsilon_high": 0.28},
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="a finished `rere demo` folder with the compact model")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100, help="GRPO steps a run (default %(default)s)")
    parser.add_argument("--test-examples", type=int, default=2000,
                        help="seeded sample of test rows every row is scored on (default %(default)s)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants only")
    args = parser.parse_args(argv)
    settings = json.loads((args.demo / "settings.json").read_text())
    if settings.get("model") != "compact":
        raise ValueError(f"{args.demo}: not a demo of the compact model (settings.json model = {settings.get('model')!r})")
    for needed in ("data/dataset.json", "sft/best/config.json", "model/prompt_template.txt"):
        if not (args.demo / needed).exists():
            raise FileNotFoundError(f"{args.demo / needed} is missing: run `rere demo -o {args.demo}` to the end first")
    base = GRPOConfig(**{**settings["grpo"], "max_steps": args.steps, "eval_examples": 0, "save_every": 10**6})
    study = Study(args.demo, args.out, args.test_examples, settings["eval_beams"])
    sft = [study.sft()]  # first: every other row is paired with it
    rows = {"popularity": [study.baseline("popularity", None, {})],
            "SASRec": [study.baseline("sasrec", seed, settings["sasrec"]) for seed in args.seeds], "SFT": sft}
    for name in args.only or VARIANTS:
        config = dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in VARIANTS[name].items()})
        rows[name] = [study.grpo(name, dataclasses.replace(config, seed=seed)) for seed in args.seeds]
    return write_table(args.out, rows, base, args, settings["eval_beams"])


class Study:
    def __init__(self, demo_dir: Path, out: Path, test_examples: int, beams: int):
        from rere.data import Dataset
        from rere.prompts import PromptTemplate

        self.demo_dir, self.out, self.limit, self.beams = demo_dir, out, test_examples, beams
        self.data = demo_dir / "data"
        self.dataset = Dataset.load(self.data)
        self.template = PromptTemplate.from_file(demo_dir / "model" / "prompt_template.txt")
        out.mkdir(parents=True, exist_ok=True)

    def baseline(self, kind: str, seed: int | None, flags: dict) -> dict:
        folder = self.out / kind / f"seed-{seed}" if seed is not None else self.out / kind
        if not (folder / "metrics.json").exists():
            started = time.perf_counter()
            argv = ["baseline", kind, "--data", str(self.data), "--split", "test", "-o", str(folder),
                    "--k", str(self.beams), "--limit", str(self.limit)]
            argv += [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
            argv += ["--seed", str(seed)] if seed is not None else []
            run_command(argv)
            write_json(folder / "seconds.json", time.perf_counter() - started)
        return self.scored(folder)

    def sft(self) -> dict:
        import torch

        from rere.models import load_model

        folder = self.out / "sft"
        if not (folder / "metrics.json").exists():
            self.evaluate(*load_model(str(self.demo_dir / "sft" / "best"), None, torch.float32), folder, "SFT")
        return self.scored(folder)

    def grpo(self, name: str, config: GRPOConfig) -> dict:
        import torch

        from rere.models import load_model
        from rere.trainer.grpo import GRPOTrainer

        run = self.out / slug(name) / f"seed-{config.seed}"
        if not (run / "test" / "metrics.json").exists():
            shutil.rmtree(run, ignore_errors=True)  # a run killed before its test: redone
            print(f"== {name}, seed {config.seed}: {config.max_steps} steps", flush=True)
            started = time.perf_counter()
            model, tokenizer = load_model(str(self.demo_dir / "sft" / "best"), None, torch.float32)
            trainer = GRPOTrainer(model, tokenizer, self.dataset, config, run / "train", template=self.template)
            trainer.run()
            write_json(run / "train" / "summary.json", {
                "seconds": time.perf_counter() - started,
                "in_group_hit_rate": statistics.mean(in_group_hit_rates(run / "train"))})
            drop_checkpoints(run / "train")
            self.evaluate(trainer.model.eval(), tokenizer, run / "test", name)
        summary = json.loads((run / "train" / "summary.json").read_text())
        return {**self.scored(run / "test"), **summary}

    def evaluate(self, model, tokenizer, folder: Path, name: str) -> None:
        from rere.evaluation import evaluate

        evaluate(model, tokenizer, self.dataset, folder, "test", num_beams=self.beams, template=self.template,
                 limit=self.limit, sample_seed=EVAL_SAMPLE_SEED, name=name)

    def scored(self, folder: Path) -> dict:
        """HR@10, NDCG@10 and the paired NDCG@10 difference to SFT with its interval."""
        from rere.comparison import compare_rankings

        metrics = json.loads((folder / "metrics.json").read_text())
        row = {"hr@10": metrics["HR@10"], "ndcg@10": metrics["NDCG@10"], "examples": metrics["examples"]}
        sft = self.out / "sft"
        if folder != sft and (sft / "rankings.jsonl").exists():
            by_metric = {d.metric: d for d in compare_rankings(sft, folder, catalog=self.dataset.catalog)}
            ndcg = by_metric["ndcg@10"]
            row["vs_sft"] = {"ndcg@10": ndcg.difference, "low": ndcg.low, "high": ndcg.high}
        if (folder / "seconds.json").exists():
            row["seconds"] = json.loads((folder / "seconds.json").read_text())
        return row


def write_table(out: Path, rows: dict[str, list[dict]], base: GRPOConfig, args, beams: int) -> dict:
    def spread(values: list[float]) -> str:
        mean = statistics.mean(values)
        return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"

    lines = ["| row | runs | HR@10 | NDCG@10 | NDCG@10 - SFT (mean) | seeds above / below SFT | in-group hit rate "
             "| s per run |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    summary = {}
    for name, runs in rows.items():
        paired = [r["vs_sft"] for r in runs if "vs_sft" in r]
        above, below = sum(p["low"] > 0 for p in paired), sum(p["high"] < 0 for p in paired)
        difference = f"{statistics.mean(p['ndcg@10'] for p in paired):+.4f}" if paired else ""
        hits = f"{statistics.mean(r['in_group_hit_rate'] for r in runs):.1%}" if "in_group_hit_rate" in runs[0] else ""
        seconds = f"{statistics.mean(r['seconds'] for r in runs):.0f}" if "seconds" in runs[0] else ""
        lines.append(f"| {name} | {len(runs)} | {spread([r['hr@10'] for r in runs])} | "
                     f"{spread([r['ndcg@10'] for r in runs])} | {difference} | "
                     f"{f'{above} / {below}' if paired else ''} | {hits} | {seconds} |")
        summary[name] = runs
    examples = rows["SFT"][0]["examples"]
    head = (f"{examples:,} test rows (seeded sample), {beams} beams; GRPO from the SFT model, {args.steps} steps of "
            f"{base.prompts_per_step} prompts, lr {base.lr:g}, beta {base.beta:g}; seeds {args.seeds}; mean ± "
            "standard deviation over seeds; 'above / below': seeds whose paired bootstrap 95% interval of "
            "NDCG@10 - SFT lies above / below 0.")
    text = head + "\n\n" + "\n".join(lines) + "\n"
    (out / "design_space.md").write_text(text)
    write_json(out / "design_space.json", {"rows": summary, "steps": args.steps, "seeds": args.seeds,
                                           "base": dataclasses.asdict(base), "variants": VARIANTS})
    print(text)
    return summary


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
