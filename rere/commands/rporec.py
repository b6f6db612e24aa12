"""`rere rporec stage1|stage2`: RPORec, reasoning-augmented recommendation with a RecHead.

    rere rporec stage1 --data DIR --model M -o RUN1        reasoning once, then the RecHead -> RUN1/head
    rere rporec stage2 --data DIR --head RUN1/head -o RUN2 GRPO on the reasoning -> RUN2/best
    rere evaluate --method rporec --data DIR --model RUN2/best --head RUN1/head -o OUT

Stage 2 starts from the LLM the head was trained with (head.json names it; --model
overrides the starting point, which must still be that LLM: the head reads its states).
Settings: the config dataclass's defaults, then --config FILE.yaml, then the flags; saved
as RUN/config.yaml. Stage 2 runs under torchrun like `rere train`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rere.commands.train import settings_from
from rere.rporec.config import Stage1Config, Stage2Config
from rere.trainer.config import add_config_arguments


def register(commands) -> None:
    parser = commands.add_parser("rporec", help="RPORec: reasoning + a recommendation head (stage1, stage2)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_subparsers(dest="stage", required=True)
    one = stages.add_parser("stage1", help="generate reasoning once, train the RecHead on it",
                            description=_doc("rere.rporec.stage1"), formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(one, model_required=True)
    add_config_arguments(one.add_argument_group("stage-1 settings (Stage1Config)"), Stage1Config)
    one.set_defaults(func=run_stage1)
    two = stages.add_parser("stage2", help="GRPO on the reasoning, rewarded by the frozen RecHead",
                            description=_doc("rere.rporec.stage2"), formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(two, model_required=False)
    two.add_argument("--head", required=True, help="the stage-1 head folder (RUN1/head)")
    add_config_arguments(two.add_argument_group("stage-2 settings (Stage2Config)"), Stage2Config)
    two.set_defaults(func=run_stage2)


def _common(parser: argparse.ArgumentParser, *, model_required: bool) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset folder (`rere prepare`)")
    parser.add_argument("--model", required=model_required,
                        help='a local Hugging Face model folder, or "smollm2"' +
                             ("" if model_required else " (default: the LLM the head was trained with)"))
    parser.add_argument("--tokenizer", help='tokenizer folder or "qwen2" (default: the model\'s)')
    parser.add_argument("-o", "--out", required=True, help="run folder")
    parser.add_argument("--config", help="YAML file of settings (flags override it)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")


def _doc(module: str) -> str:
    """A module's docstring, read from its source: importing the stage would load torch and
    transformers for every `rere` call (the CLI builds all its parsers at start-up)."""
    import ast
    import importlib.util

    return ast.get_docstring(ast.parse(Path(importlib.util.find_spec(module).origin).read_text()))


def run_stage1(args: argparse.Namespace) -> None:
    import torch

    from rere.models import load_model
    from rere.data import Dataset
    from rere.rporec.stage1 import train_stage1
    from rere.trainer.training_run import describe_best

    config = settings_from(args, Stage1Config)
    model, tokenizer = load_model(args.model, args.tokenizer, torch.float32)
    spec = args.model if args.model == "smollm2" else str(Path(args.model).resolve())
    result = train_stage1(model, tokenizer, Dataset.load(args.data), config, args.out, resume=args.resume,
                          encoder_spec=spec)
    print(f"trained the RecHead for {result['epochs']} epochs ({describe_best(result, 'epoch', 'RUN/head')}; well-formed "
          f"reasoning {result['format_rate']:.0%}); wrote {result['head']}")


def run_stage2(args: argparse.Namespace) -> None:
    import torch

    from rere.models import load_model
    from rere.data import Dataset
    from rere.rporec.rec_head import RecHead
    from rere.rporec.stage2 import Stage2Trainer
    from rere.trainer.training_run import describe_best
    from rere.distributed import init_distributed

    config = settings_from(args, Stage2Config)
    dist = init_distributed(config.device)
    head = RecHead.load(args.head, device=dist.device)
    model, tokenizer = load_model(encoder_spec(head, args.model), args.tokenizer, torch.float32)
    trainer = Stage2Trainer(model, tokenizer, Dataset.load(args.data), head, config, args.out, dist=dist)
    result = trainer.run(resume=args.resume)
    if dist.is_main:
        print(f"trained {result['steps']} steps ({describe_best(result)}); "
              f"wrote {args.out}/best, metrics.jsonl and metrics.png")


def encoder_spec(head, given: str | None) -> str:
    """The LLM to load for a head: `given`, else the one head.json names."""
    spec = given or head.provenance.get("encoder_spec")
    if spec is None:
        raise ValueError("the head does not say which LLM it reads: pass --model (or --encoder)")
    return spec
