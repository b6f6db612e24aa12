"""The `rere` command line.

    rere index build [CATALOG] [-o OUT]   build a catalog index (default: a synthetic 1M-item catalog)
    rere index info INDEX                 print what an index holds
    rere prepare SOURCE ... -o DIR        a dataset (ReRe CSV, raw Amazon, Yelp, MovieLens, semantic IDs) -> DIR
    rere sid build --data DIR -o OUT      the same dataset, items as semantic IDs built from item data (RQ-KMeans)
    rere model init --data DIR -o MODEL   a compact Llama from scratch over a SID dataset's tokens
    rere evaluate --data DIR --model M -o OUT   rank with constrained beam search; HR@K, NDCG@K, ...
    rere baseline popularity|sasrec --data DIR -o OUT   the comparison baselines, same metrics
    rere compare RUN_A RUN_B [--data DIR]       B - A on HR@K / NDCG@K with a paired bootstrap 95% interval
    rere sft --data DIR --model M -o RUN        supervised fine-tuning (best model in RUN/best)
    rere train --data DIR --model M -o RUN      ReRe: GRPO with beam-search rollouts and ranking rewards
    rere rporec stage1|stage2 ...               RPORec: reasoning, a RecHead, GRPO on the reasoning
    rere demo [-o OUT] [--model M] [--data DIR] [--gpu]   end to end: baselines, SFT, ReRe, one table with intervals
"""
from __future__ import annotations

import argparse
import sys

from rere.commands import baseline, compare, demo, evaluate, index, model, prepare, rporec, sft, sid, train

COMMANDS = (index, prepare, sid, model, evaluate, baseline, compare, sft, train, rporec, demo)  # each registers its subcommand(s)
# Commands that compute with torch: they take the CPU cores no other process is using
# (rere/cpu_threads.py has the measurement); the demo says so in its own first line.
CPU_HEAVY = ("sid", "evaluate", "baseline", "sft", "train", "rporec")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rere", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        if args.command in CPU_HEAVY:
            from rere.cpu_threads import use_free_cores
            print(f"rere {args.command}: {use_free_cores()}", file=sys.stderr)
        args.func(args)
    except (OSError, ValueError, KeyError) as err:
        print(f"rere: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
