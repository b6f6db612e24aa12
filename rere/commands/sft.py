"""`rere sft`: supervised fine-tuning on a prepared dataset's training examples, with periodic
validation, early stopping, checkpoints and --resume (see rere/trainer/sft.py for the run
folder). The best model lands in OUT/best/, ready for `rere evaluate --model OUT/best`.

Settings: SFTConfig's defaults, then --config FILE.yaml, then the flags below; with
--resume and no --config, the run folder's config.yaml stands in for the file. Under
`torchrun --nproc_per_node N rere sft ...` every process trains on its own batches (DDP;
gloo on the CPU, NCCL on GPUs).
"""
from __future__ import annotations

import argparse


def register(commands) -> None:
    from rere.commands.train import add_run_arguments
    from rere.trainer.config import add_config_arguments
    from rere.trainer.sft_config import SFTConfig

    parser = commands.add_parser("sft", help="supervised fine-tuning of an LLM recommender on a prepared dataset",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    add_config_arguments(parser.add_argument_group("training settings (SFTConfig)"), SFTConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rere.commands.train import load_run_inputs
    from rere.trainer.sft import SFTConfig, train_sft
    from rere.trainer.training_run import describe_best

    config, dataset, dist, model, tokenizer, template = load_run_inputs(args, SFTConfig)
    result = train_sft(model, tokenizer, dataset, config, args.out, dist=dist, resume=args.resume, template=template)
    if dist.is_main:
        print(f"trained {result['steps']} steps ({describe_best(result)}); "
              f"wrote {args.out}/best, metrics.jsonl and metrics.png")
