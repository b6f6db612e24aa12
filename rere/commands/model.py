"""`rere model init`: a compact generative recommender for a semantic-ID dataset.

    rere model init --data DIR -o MODEL [--hidden 128] [--layers 2] [--heads 4] [--seed 0]

Writes MODEL, a Hugging Face folder (config, weights, tokenizer) of a small Llama
initialised from scratch over the catalog's SID tokens and a compact prompt's words, and
MODEL/prompt_template.txt, the prompt to train and evaluate it with:

    rere sft --data DIR --model MODEL --template MODEL/prompt_template.txt -o RUN
    rere evaluate --data DIR --model RUN/best --template MODEL/prompt_template.txt -o EVAL
"""
from __future__ import annotations

import argparse

from rere.commands import verb_parser


def register(commands) -> None:
    init = verb_parser(commands, "model", "init", "a compact Llama from scratch over a SID dataset's tokens", __doc__)
    init.add_argument("--data", required=True, help="prepared dataset folder whose items are semantic IDs")
    init.add_argument("-o", "--out", required=True, help="model folder to write (must not exist)")
    init.add_argument("--hidden", type=int, default=128, help="hidden size (default 128)")
    init.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    init.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    init.add_argument("--intermediate", type=int, default=512, help="MLP size (default 512)")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rere.compact_model import CompactModelConfig, init_compact_model
    from rere.data.dataset import Dataset

    dataset = Dataset.load(args.data)
    config = CompactModelConfig(hidden=args.hidden, layers=args.layers, heads=args.heads,
                                intermediate=args.intermediate, seed=args.seed)
    out = init_compact_model(dataset.catalog, args.out, config)
    print(f"wrote {out}: a compact Llama ({config}) over {len(dataset.catalog):,} items' semantic IDs")
