"""The demo's stages, each writing its own folder of OUT: the dataset, the two baselines,
the compact model, SFT, ReRe and their evaluations; and what they share: running a `rere`
subcommand through its parser, resuming or restarting a killed trainer, dropping a finished
stage's checkpoints."""
from __future__ import annotations

import argparse
import math
import shutil
from collections.abc import Callable
from pathlib import Path

from rere.demo.presets import EVAL_SAMPLE_SEED, DemoSettings
from rere.demo.results import ROWS, in_group_hit_rates
from rere.files import write_json


def prepare_data(data: str | None, source: str, prepared: Path, folder: Path, settings: DemoSettings) -> None:
    """FOLDER: the dataset every later stage reads. From --data DATA as it is, or from
    `rere prepare movielens SOURCE -o PREPARED` (default preprocessing); for the compact
    model with semantic IDs built (`semantic_ids_for`) when its catalog has titles."""
    from rere.data import Dataset

    if data is None:
        if not (prepared / "dataset.json").exists():  # written last: the folder is whole once it is there
            run_command(["prepare", "movielens", source, "-o", str(prepared)])
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
    run_command(argv)


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
    write_json(folder / "result.json", {**result, "base_model": description})
    drop_checkpoints(folder)


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
    write_json(folder / "result.json", {**result, "steps_with_signal": learning,
                                        "in_group_hit_rate": {"mean": _mean(rates), "min": min(rates, default=0.0),
                                                              "max": max(rates, default=0.0)}})
    drop_checkpoints(folder)


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


def drop_checkpoints(folder: Path) -> None:
    """A finished stage's checkpoints only served to resume it, and weigh 1.6 GB each with
    SmolLM2 (weights and AdamW state): deleted, keeping the model (best/, final/) and logs."""
    from rere.trainer.checkpoint import LATEST

    (folder / LATEST).unlink(missing_ok=True)
    for checkpoint in folder.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)


def rere_model(folder: Path) -> Path:
    """The ReRe model to test: the best on validation if the run validated, else the last."""
    return folder / "best" if (folder / "best" / "config.json").exists() else folder / "final"


def run_command(argv: list[str]) -> None:
    """Run `rere prepare ...` or `rere baseline ...` in this process, its errors raised (not
    turned into an exit status). Only those two subcommands are registered: importing
    rere.cli here would make an import circle (it registers rere.commands.demo, which runs
    this package)."""
    from rere.commands import baseline, prepare

    parser = argparse.ArgumentParser(prog="rere")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (prepare, baseline):
        command.register(commands)
    args = parser.parse_args(argv)
    args.func(args)
