"""`rere baseline popularity|sasrec`: train a non-LLM baseline, rank a split, score it as
`rere evaluate` scores the LLM.

Trains on `rere.data.training_sequences.training_data` (the train split, or without one the histories
of the rows, never the evaluated targets; a warning says so), ranks every example of
--split and writes into --out, each file atomically:

    metrics.json    `rere.metrics.ranking_metrics`, plus "training" (what it trained on, and
                    for SASRec the epochs and timings) and "settings"
    metrics.md      the same as a markdown table (the columns of `rere evaluate`)
    rankings.jsonl  one line per example, in split order: {"example": i, "user", "target",
                    "ranked": [item_id, ...]} (best first), as `rere evaluate` writes it
    model/          SASRec only: the trained model (`SASRec.load`)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

NAMES = {"popularity": "popularity", "sasrec": "SASRec"}
TABLE_EXTRA = ("coverage@10", "invalid_rate")  # as `rere evaluate`, so the rows line up
SASREC_OPTIONS = (  # flag, type, help; each sets the SASRecConfig field of the same name
    ("--epochs", int, "most epochs (early stopping on validation NDCG@10 usually ends sooner)"),
    ("--patience", int, "epochs without a better validation NDCG@10 before stopping"),
    ("--hidden", int, "embedding and attention size"),
    ("--layers", int, "self-attention blocks"),
    ("--heads", int, "attention heads"),
    ("--max-len", int, "history items the model reads (ReRe's data keeps 10)"),
    ("--dropout", float, "dropout rate"),
    ("--lr", float, "Adam learning rate"),
    ("--batch-size", int, "training windows per step"),
    ("--seed", int, "seed for weights, dropout and batch order"),
)


def register(commands) -> None:
    baseline = commands.add_parser("baseline", help="train and score a non-LLM baseline (most-popular, SASRec)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = baseline.add_subparsers(dest="baseline", required=True)
    popularity = kinds.add_parser("popularity", help="the most popular training items, for everyone")
    sasrec = kinds.add_parser("sasrec", help="SASRec (Kang & McAuley 2018), full-softmax next-item training",
                              description="Options left out take rere.baselines.SASRecConfig's defaults "
                                          "(printed at the start of a run and saved in metrics.json).")
    for parser in (popularity, sasrec):
        parser.add_argument("--data", required=True, help="prepared dataset folder (`rere prepare`)")
        parser.add_argument("--split", default="test", help="split to rank and score (default test)")
        parser.add_argument("-o", "--out", required=True, help="output folder")
        parser.add_argument("--k", type=int, default=50, help="items ranked per example (default 50)")
        parser.add_argument("--limit", type=int, help="rank N examples drawn as `rere evaluate --limit` draws them")
        parser.add_argument("--sample-seed", type=int, default=0, help="seed of the --limit draw (default 0)")
        parser.add_argument("--exclude-history", action="store_true",
                            help="never recommend an item of the user's history (default: allowed, as for the LLM)")
        parser.add_argument("--name", help="row name in the metrics table")
        parser.set_defaults(func=run)
    # No defaults here: SASRecConfig holds them, and importing it (torch) would slow every `rere` call.
    for flag, kind, help in SASREC_OPTIONS:
        sasrec.add_argument(flag, type=kind, help=help)
    sasrec.add_argument("--device", help="default: cuda when a GPU is present, else cpu")


def run(args: argparse.Namespace) -> None:
    from rere.baselines import Popularity
    from rere.data.training_sequences import training_data
    from rere.data import Dataset
    from rere.data.dataset import sample_examples
    from rere.evaluation import ranking_row, split_metrics
    from rere.files import write_atomically
    from rere.metrics import KS, metrics_table

    dataset = Dataset.load(args.data)
    examples = sample_examples(dataset.split(args.split), args.limit, args.sample_seed)
    catalog = dataset.catalog
    if not 1 <= args.k <= len(catalog):
        raise ValueError(f"--k must be in 1..{len(catalog)} (the catalog size), got {args.k}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = training_data(dataset, args.split)
    for warning in caught:
        print(f"rere baseline: WARNING: {warning.message}", file=sys.stderr)
    print(f"{dataset}; training on {data.source}: {len(data.sequences):,} sequences", file=sys.stderr)

    start = time.perf_counter()
    if args.baseline == "popularity":
        model = Popularity(catalog, exclude_history=args.exclude_history).fit(data.sequences)
        training = {}
    else:
        model, training = _train_sasrec(args, catalog, data)
    training = {**data.summary(), **training, "seconds": time.perf_counter() - start}
    ranked = model.rank(examples, args.k)

    ks = tuple(k for k in KS if k <= args.k) or (args.k,)
    metrics = split_metrics(catalog, examples, ranked, data.sequences, ks)
    name = args.name or NAMES[args.baseline] + (" (history excluded)" if args.exclude_history else "")
    settings = {key: value for key, value in vars(args).items() if key != "func"}
    table = metrics_table({name: metrics}, ks, extra=TABLE_EXTRA)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = (ranking_row(i, e, [catalog.ids[p] if p >= 0 else None for p in ranked[i].tolist()])
            for i, e in enumerate(examples))
    write_atomically(out / "rankings.jsonl", (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    result = {"name": name, **metrics, "training": training, "settings": settings}
    write_atomically(out / "metrics.json", [json.dumps(result, indent=2) + "\n"])
    write_atomically(out / "metrics.md", [table + "\n"])
    print(table)
    print(f"wrote {out}/metrics.json, metrics.md and rankings.jsonl")


def _train_sasrec(args: argparse.Namespace, catalog, data):
    """Fit SASRec with early stopping (on a clean validation split, else on each training
    sequence's held-out last item) and save it to OUT/model."""
    from dataclasses import asdict

    import torch

    from rere.baselines import SASRec, SASRecConfig
    from rere.data.training_sequences import holdout_last

    fields = (flag[2:].replace("-", "_") for flag, _, _ in SASREC_OPTIONS)
    config = SASRecConfig(**{f: getattr(args, f) for f in fields if getattr(args, f) is not None})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sequences, validation, source = data.sequences, data.validation, data.validation_source
    if validation is None:
        sequences, validation = holdout_last(sequences)
        source = "the last item of each training sequence, held out from training"
    print(f"SASRec {config} on {device}; early stopping on {source} ({len(validation):,} examples)",
          file=sys.stderr)
    model = SASRec(catalog, config, device, exclude_history=args.exclude_history)
    fitted = model.fit(sequences, validation)
    model.save(Path(args.out) / "model")
    return model, {**fitted, "config": asdict(config), "early_stopping_on": source, "device": device}


