"""`rere sid build`: semantic IDs for a prepared dataset's items, built from item data.

    rere sid build --data DIR -o OUT [--embeddings collaborative|text|FILE.npy|FILE.npz]
                   [--levels 3] [--codebook-size 256] [--balance 1.0] [--seed 0]

Writes OUT, a prepared dataset with the same splits whose catalog spells each item as its
semantic ID (MiniOneRec-style tokens, "<a_12>", "<b_3>", ...), and prints the report:
codes used per level, items that shared all their level codes (they get a last
disambiguating code), and how the embeddings were made. The same report is in
OUT/dataset.json under options.semantic_ids.
"""
from __future__ import annotations

import argparse
import json

from rere.commands import verb_parser


def register(commands) -> None:
    build = verb_parser(commands, "sid", "build", "a copy of a prepared dataset whose items are semantic IDs built "
                        "from item data (RQ-KMeans)", __doc__)
    build.add_argument("--data", required=True, help="prepared dataset folder (`rere prepare`)")
    build.add_argument("-o", "--out", required=True, help="output dataset folder (must not exist)")
    build.add_argument("--embeddings", default="collaborative",
                       help="collaborative (item co-occurrence in the training sequences, default), text (an LLM's "
                            "mean-pooled states of each title; see --model), or a .npy / .npz file of your own")
    build.add_argument("--levels", type=int, default=3, help="codes per item before disambiguation (default 3)")
    build.add_argument("--codebook-size", type=int, default=256, help="codes per level (default 256)")
    build.add_argument("--balance", type=float, default=1.0,
                       help="largest group a code may name, as a multiple of items / codebook size (default 1.0: "
                            "strictly balanced)")
    build.add_argument("--dim", type=int, default=64, help="collaborative embedding size (default 64)")
    build.add_argument("--window", type=int, default=5, help="co-occurrence window in a sequence (default 5)")
    build.add_argument("--evaluated-split", default="test",
                       help="split whose targets collaborative embeddings must not see (default test)")
    build.add_argument("--model", default="smollm2", help='text embeddings: "smollm2" or a local model folder')
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rere.data.dataset import Dataset
    from rere.semantic_ids.build import build_semantic_ids

    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"--out {out} exists; choose a new folder")
    dataset = Dataset.load(args.data)
    text_model = None
    if args.embeddings == "text":
        import torch

        from rere.models import load_model

        text_model = load_model(args.model, None, torch.float32)
    built = build_semantic_ids(dataset, embeddings=args.embeddings, levels=args.levels,
                               codebook_size=args.codebook_size, balance=args.balance, dim=args.dim,
                               window=args.window, evaluated=args.evaluated_split, text_model=text_model,
                               seed=args.seed)
    built.save(out)
    print(json.dumps(built.options["semantic_ids"], indent=1))
    print(f"wrote {out}: {built}")
