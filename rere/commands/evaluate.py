"""`rere evaluate`: rank items for every example of a prepared split and score them with
`rere.metrics` (HR@K, NDCG@K, ...), resumable (rere/evaluation.py lists the files).
Under `torchrun --nproc_per_node N -m rere.cli evaluate ...` each rank ranks a share of the
examples; the files are those of one process.

    --method rere     (default) constrained beam search: --beams items per example
    --method rporec   greedy reasoning by --model, then the RecHead (--head) over the whole
                      catalog: --beams items per example; the head reads the states of the
                      LLM it was trained with (--encoder, default: the one head.json names)
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("evaluate", help="rank items with a model over a prepared split and score them",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("rere", "rporec"), default="rere",
                        help="rere: constrained beam search (default); rporec: reasoning + RecHead")
    parser.add_argument("--data", required=True, help="prepared dataset folder (`rere prepare`)")
    parser.add_argument("--model", required=True,
                        help='a local Hugging Face model folder, or "smollm2" (the offline SmolLM2-135M-Instruct)')
    parser.add_argument("--tokenizer", help='tokenizer folder or "qwen2" (default: the model\'s)')
    parser.add_argument("-o", "--out", required=True, help="output folder (an interrupted run resumes from it)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beams", type=int, default=50, help="beam width = items ranked per example (default 50)")
    parser.add_argument("--batch-size", type=int, help="prompts per beam search (default: what fits in memory)")
    parser.add_argument("--limit", type=int,
                        help="evaluate N examples drawn at random (seeded by --sample-seed), kept in split order")
    parser.add_argument("--sample-seed", type=int, default=0,
                        help="seed of the --limit draw (default 0: two runs with the same N rank the same rows)")
    parser.add_argument("--max-prompt-tokens", type=int, help="drop the oldest history items beyond this prompt length")
    parser.add_argument("--exclude-history", action="store_true", help="never recommend an item of the user's history")
    parser.add_argument("--template", help="prompt template file with {category} and {history} slots")
    parser.add_argument("--device", help="default: cuda when a GPU is present, else cpu (under torchrun: each "
                        "rank's own GPU)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="model dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--name", help="row name in the metrics table (default: the model's name)")
    rporec = parser.add_argument_group("--method rporec")
    rporec.add_argument("--head", help="the RecHead folder (`rere rporec stage1` writes RUN/head)")
    rporec.add_argument("--encoder", help="the LLM the head reads (default: the one head.json names)")
    rporec.add_argument("--no-reasoning", action="store_true", help="the head reads the prompt alone")
    rporec.add_argument("--max-new-tokens", type=int, default=128, help="reasoning length limit (default 128)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from rere.data import Dataset
    from rere.distributed import init_distributed
    from rere.evaluation import evaluate
    from rere.metrics import metrics_table
    from rere.models import load_model
    from rere.prompts import PromptTemplate

    dataset = Dataset.load(args.data)
    dist = init_distributed(args.device)  # under torchrun: one rank per device, each ranks a share
    args.device = dist.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if dist.device.type == "cuda" else "float32"))
    model, tokenizer = load_model(args.model, args.tokenizer, dtype)
    model.to(dist.device)
    name = args.name or Path(args.model).name
    if args.method == "rporec":
        metrics = _evaluate_rporec(args, dataset, model, tokenizer, dtype, name, dist)
    else:
        if args.head or args.encoder:
            raise ValueError("--head and --encoder are for --method rporec")
        template = PromptTemplate.from_file(args.template) if args.template else None
        metrics = evaluate(model, tokenizer, dataset, args.out, args.split, num_beams=args.beams,
                           batch_size=args.batch_size, template=template, max_prompt_tokens=args.max_prompt_tokens,
                           exclude_history=args.exclude_history, limit=args.limit,
                           sample_seed=args.sample_seed, name=name, dist=dist)
    if dist.is_main:
        print(metrics_table({name: metrics}, extra=("coverage@10", "invalid_rate")))
        print(f"wrote {args.out}/metrics.json, metrics.md and rankings.jsonl")


def _evaluate_rporec(args, dataset, model, tokenizer, dtype, name: str, dist) -> dict:
    from rere.commands.rporec import encoder_spec
    from rere.models import load_model
    from rere.rporec.evaluation import evaluate_rporec
    from rere.rporec.rec_head import RecHead

    if not args.head:
        raise ValueError("--method rporec needs --head (the folder `rere rporec stage1` writes: RUN/head)")
    if args.template:
        raise ValueError("--template is for --method rere: RPORec uses its reasoning prompt (rere/rporec/reasoning.py)")
    head = RecHead.load(args.head, device=args.device)
    spec = encoder_spec(head, args.encoder)
    if Path(spec).resolve() == Path(args.model).resolve() or spec == args.model:
        encoder = model
    else:
        encoder, _ = load_model(spec, args.tokenizer, dtype)
        encoder.to(args.device)
    return evaluate_rporec(model, encoder, tokenizer, head, dataset, args.out, args.split, k=args.beams,
                           reasoning=not args.no_reasoning, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size or 16, max_prompt_tokens=args.max_prompt_tokens,
                           exclude_history=args.exclude_history, limit=args.limit,
                           sample_seed=args.sample_seed, name=name, dist=dist)
