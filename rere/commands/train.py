"""`rere train`: ReRe GRPO from an SFT model (rere.trainer.grpo), resumable.

    rere train --data DIR --model RUN_DIR/best -o RUN [--config grpo.yaml] [--resume] [--num-generations 16 ...]
    torchrun --nproc_per_node 8 -m rere.cli train ...      (one process per GPU; gloo on CPUs)

Settings come from GRPOConfig's defaults, then the YAML file, then the flags; the result is
saved as RUN/config.yaml (and reused by --resume). RUN holds checkpoints (checkpoint-*/, latest), metrics.jsonl,
tensorboard/, metrics.png and best/ (the best model by validation NDCG@10, a plain Hugging
Face folder for `rere evaluate --model RUN/best`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rere.trainer.config import add_config_arguments
from rere.trainer.grpo_config import GRPOConfig


def register(commands) -> None:
    parser = commands.add_parser("train", help="ReRe: GRPO with constrained beam-search rollouts and ranking rewards",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    add_config_arguments(parser, GRPOConfig)
    parser.set_defaults(func=run)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What `rere sft` and `rere train` both take besides their config flags."""
    parser.add_argument("--data", required=True, help="prepared dataset folder (`rere prepare`)")
    parser.add_argument("--model", required=True,
                        help='a local Hugging Face model folder (e.g. an SFT run\'s best/), or "smollm2"')
    parser.add_argument("--tokenizer", help='tokenizer folder or "qwen2" (default: the model\'s)')
    parser.add_argument("-o", "--out", required=True, help="run folder: checkpoints, metrics, best model")
    parser.add_argument("--config", help="YAML file of settings (flags override it)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    parser.add_argument("--template", help="prompt template file with {category} and {history} slots")


def run(args: argparse.Namespace) -> None:
    from rere.trainer.grpo import GRPOTrainer
    from rere.trainer.training_run import describe_best

    config, dataset, dist, model, tokenizer, template = load_run_inputs(args, GRPOConfig)
    result = GRPOTrainer(model, tokenizer, dataset, config, args.out, dist=dist, template=template).run(
        resume=args.resume)
    if dist.is_main:
        print(f"trained {result['steps']} steps ({describe_best(result)}); "
              f"wrote {args.out}/best, metrics.jsonl and metrics.png")


def settings_from(args: argparse.Namespace, config_class):
    """A trainer's settings: the dataclass defaults, then --config (with --resume and no
    --config, the run folder's saved config.yaml), then the flags."""
    from rere.trainer.config import load_config, overrides_from_args

    saved = Path(args.out) / "config.yaml"
    config_file = args.config or (saved if args.resume and saved.exists() else None)
    return load_config(config_class, config_file, overrides_from_args(args, config_class))


def load_run_inputs(args: argparse.Namespace, config_class):
    """(config, dataset, dist, model, tokenizer, template) for `rere sft` and `rere train`.

    Settings: `settings_from`."""
    import torch

    from rere.models import load_model
    from rere.data import Dataset
    from rere.prompts import PromptTemplate
    from rere.distributed import init_distributed

    config = settings_from(args, config_class)
    dataset = Dataset.load(args.data)
    dist = init_distributed(config.device)
    # fp32 weights whatever the device: AdamW's small updates would round away in bf16 (bf16 is autocast).
    model, tokenizer = load_model(args.model, args.tokenizer, torch.float32)
    template = PromptTemplate.from_file(args.template) if args.template else None
    return config, dataset, dist, model, tokenizer, template
