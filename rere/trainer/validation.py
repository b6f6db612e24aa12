"""Periodic validation for the trainers (SFT and GRPO): rank held-out examples with
constrained beam search, exactly as `rere evaluate` does (`rere.evaluation.rank_prompts`),
and score them with `rere.metrics.ranking_metrics`. Keys are its names in lower case
("hr@5", "ndcg@10", ...; the trainers' metrics logs and plots use these) plus "invalid_rate".
Early stopping on those validations, the same in every trainer: `record_validation`."""
from __future__ import annotations

import contextlib

import torch

from rere.catalog import Catalog
from rere.data.dataset import Example
from rere.evaluation import rank_prompts
from rere.index import CatalogIndex
from rere.metrics import ranking_metrics
from rere.prompts import Prompter
from rere.distributed import Distributed, unwrap


def validate(model: torch.nn.Module, tokenizer, index: CatalogIndex, catalog: Catalog, prompter: Prompter,
             examples: list[Example], *, num_beams: int = 20, batch_size: int = 8,
             ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    """The "hr@k" and "ndcg@k" for k in `ks`, "invalid_rate" and "examples" of `examples`, ranked
    by `num_beams`-wide beam search, `batch_size` prompts at a time. `index` must be built
    from `catalog` (its item ids are catalog positions) and sit on the model's device. The
    model (or the module a DDP wrapper holds) runs in eval mode without gradients, and goes
    back to its former mode afterwards. Each rank validates the examples it is given: shard
    them and average the results weighted by "examples" (no examples: every metric is 0 and
    "examples" 0, so that a rank whose shard is empty still takes part in the average)."""
    keys = [f"{name}@{k}" for k in ks for name in ("hr", "ndcg")] + ["invalid_rate"]
    if not examples:
        return {**dict.fromkeys(keys, 0.0), "examples": 0}
    model = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        ranked = []
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            ranked += rank_prompts(model, tokenizer, index, [prompter.prompt(e.history) for e in batch], num_beams)[0]
    finally:
        model.train(was_training)
    metrics = ranking_metrics(ranked, [catalog.index_of(e.target) for e in examples], catalog, ks)
    # ranking_metrics says "HR@5", "NDCG@10": the same metrics, under the logs' lower-case names.
    return {**{key: metrics[key.upper() if "@" in key else key] for key in keys}, "examples": len(examples)}


def validate_on_ranks(model, tokenizer, index: CatalogIndex, catalog: Catalog, prompter: Prompter,
                      examples: list[Example], dist: Distributed, *, num_beams: int = 20,
                      batch_size: int = 8, local=contextlib.nullcontext) -> dict[str, float]:
    """`validate` over all ranks: each ranks its shard of `examples`, and the means are
    weighted by the shards' sizes (which differ by at most one). `local()`: a context around
    this rank's own beam searches (`distributed.lockstep` for a sharded model)."""
    with local():
        metrics = validate(model, tokenizer, index, catalog, prompter, dist.shard(examples), num_beams=num_beams,
                           batch_size=batch_size)
    count = metrics.pop("examples")
    means = dist.mean({**{k: v * count for k, v in metrics.items()}, "examples": count})
    return {k: means[k] / means["examples"] for k in metrics}


def record_validation(state: dict, metrics: dict, at: dict, patience: int, metric: str = "ndcg@10") -> bool:
    """Early stopping, as every trainer here does it: update the run's `state` ({"best",
    "bad_evals", "stopped_early"}, checkpointed with the run) with a validation's `metrics`
    taken at `at` (e.g. {"step": 200}); True when they are the best so far by `metric` (the
    caller saves best/ then). After `patience` validations in a row without a better one
    (0: never) the state says stopped_early."""
    if state["best"] is None or metrics[metric] > state["best"][metric]:
        state["best"], state["bad_evals"] = {**at, **metrics}, 0
        return True
    state["bad_evals"] += 1
    state["stopped_early"] = bool(patience) and state["bad_evals"] >= patience
    return False
