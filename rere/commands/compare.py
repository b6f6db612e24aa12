"""`rere compare A B`: is run B better than run A on the same examples?

    rere compare runs/sft runs/rere [--data DIR] [--k 10] [--resamples 10000] [-o FILE]

A and B are run folders (or their rankings.jsonl) of `rere evaluate` or `rere baseline`
over the same examples. Prints, for HR@K and NDCG@K, both means, B - A and the paired
bootstrap 95% interval of the difference (`rere.comparison`); -o writes them as JSON.
With --data, a hit is any item sharing the target's identifier, as `rere evaluate` scores.
"""
from __future__ import annotations

import argparse
import json


def register(commands) -> None:
    parser = commands.add_parser("compare", help="paired bootstrap interval of the HR/NDCG difference of two runs",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the baseline run (folder or rankings.jsonl)")
    parser.add_argument("b", help="the run compared with it")
    parser.add_argument("--data", help="prepared dataset folder: hits by identifier (duplicated titles count)")
    parser.add_argument("--k", type=int, default=10, help="cut-off of HR@K and NDCG@K (default 10)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--out", help="write the differences here as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rere.comparison import as_json, compare_rankings
    from rere.data.dataset import Dataset
    from rere.files import write_atomically

    catalog = Dataset.load(args.data).catalog if args.data else None
    differences = compare_rankings(args.a, args.b, catalog=catalog, k=args.k, resamples=args.resamples,
                                   seed=args.seed)
    print(f"{'metric':>8} {'A':>8} {'B':>8} {'B - A':>9}  95% interval ({differences[0].examples} examples, "
          f"paired bootstrap)")
    for d in differences:
        verdict = "B better" if d.low > 0 else "A better" if d.high < 0 else "no clear difference"
        print(f"{d.metric:>8} {d.a:>8.4f} {d.b:>8.4f} {d.difference:>+9.4f}  [{d.low:+.4f}, {d.high:+.4f}]  {verdict}")
    if args.out:
        write_atomically(Path(args.out), json.dumps(as_json(differences), indent=1) + "\n")
