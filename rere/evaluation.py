"""Evaluate a generative recommender: constrained beam search over a split, ranked items per
example, and the metrics of `rere.metrics`.

`evaluate` writes into its output folder:

    run.json        the settings (a resumed run must use the same ones)
    rankings.jsonl  one line per example, in split order: {"example": i, "user", "target",
                    "ranked": [item_id or null, ...] (best first; null = empty slot),
                    "scores": [...]}; appended batch by batch and flushed, so an
                    interrupted run resumes after the last complete line (under
                    torchrun each rank appends to its own rankings.rank{r}.jsonl,
                    merged into rankings.jsonl at the end)
    metrics.json    `ranking_metrics` of every example, plus the settings
    metrics.md      the same as a markdown table

The beam width is 50 by default (the paper's evaluation). The batch size is chosen so the
beam search's keys, values and logits fit a memory budget (`auto_batch_size`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rere.data.training_sequences import item_counts, training_data
from rere.catalog import Catalog
from rere.data import Dataset, Example
from rere.data.dataset import sample_examples
from rere.distributed import Distributed
from rere.files import check_settings, complete_jsonl_lines, write_atomically, write_json
from rere.index import CatalogIndex
from rere.index.catalog_cache import cached_catalog
from rere.metrics import KS, metrics_table, ranking_metrics
from rere.prompts import PromptTemplate, Prompter
from rere.sampler import beam_search, left_pad

DEFAULT_BEAMS = 50
RANKINGS = "rankings.jsonl"
CPU_BUDGET_BYTES = 2 << 30  # the CPU has no free-memory query worth trusting: a fixed 2 GiB


def evaluate(model, tokenizer, dataset: Dataset, out_dir: str | os.PathLike, split: str = "test", *,
             num_beams: int = DEFAULT_BEAMS, batch_size: int | None = None, index: CatalogIndex | None = None,
             template: PromptTemplate | None = None, max_prompt_tokens: int | None = None,
             exclude_history: bool = False, limit: int | None = None, sample_seed: int = 0, name: str = "model",
             progress: bool = True, dist: Distributed | None = None) -> dict:
    """Rank `num_beams` items for every example of `split` (`limit` of them drawn with
    `sample_seed`, see `sample_examples`), write the files above and return the metrics.
    Resumes from `out_dir/rankings.jsonl` if present. Under torchrun (`dist`), each rank
    ranks a share of the examples with its own copy of the model (`evaluate_rankings`)."""
    examples = sample_examples(dataset.split(split), limit, sample_seed)
    settings = {"name": name, "split": split, "examples": len(examples), "num_beams": num_beams,
                "limit": limit, "sample_seed": sample_seed if limit is not None else None,
                "exclude_history": exclude_history, "max_prompt_tokens": max_prompt_tokens,
                "template": (template or PromptTemplate()).text, "dataset": dataset.source}
    device = next(model.parameters()).device
    prompter = Prompter(dataset.catalog, dataset.category, template, tokenizer, max_prompt_tokens)
    if index is None:
        index = cached_catalog(dataset.catalog, tokenizer, template=prompter.completion_format,
                               context=prompter.template.context, vocab_size=model.config.vocab_size, dist=dist).index
    index = index.to(device)
    prompts: dict[int, str] = {}

    def prompt(i: int) -> str:
        if i not in prompts:
            prompts[i] = prompter.prompt(examples[i].history)
        return prompts[i]

    def sized_batch(todo: list[int]) -> int:
        if batch_size is not None:
            return batch_size
        longest = max((prompt(i) for i in todo), key=len, default="")  # by characters: one tokenizer call
        prompt_tokens = max(1, len(tokenizer(longest, add_special_tokens=False)["input_ids"]))
        return auto_batch_size(model, num_beams, prompt_tokens, index.max_depth, device)

    def rank(batch: list[int]):
        # Items of an index built by `CatalogIndex.from_catalog` are catalog positions.
        exclude = [[dataset.catalog.index_of(h) for h in examples[i].history] for i in batch] if exclude_history else None
        return rank_prompts(model, tokenizer, index, [prompt(i) for i in batch], num_beams, exclude)

    return evaluate_rankings(dataset, examples, out_dir, split, settings, rank, sized_batch, name=name,
                             progress=progress, dist=dist)


def evaluate_rankings(dataset: Dataset, examples: list[Example], out_dir: str | os.PathLike, split: str,
                      settings: dict, rank: Callable[[list[int]], tuple[list[list[int]], list[list[float]]]],
                      batch_size: int | Callable[[list[int]], int], *, name: str, progress: bool = True,
                      dist: Distributed | None = None) -> dict:
    """The resumable loop behind every ranking method (ReRe's beam search, RPORec's head):
    `rank(example indices) -> (ranked catalog positions, scores)` per batch, appended to
    `rankings.jsonl`; then `metrics.json` and `metrics.md`. `settings` must match those of
    a run being resumed. `batch_size` may be a function of the examples still to rank.

    Under torchrun (`dist`) every rank ranks its share of the examples still to rank into
    its own `rankings.rank{r}.jsonl` (resumable on its own: a resumed run, on any number of
    ranks, keeps every complete line of every file); at the end rank 0 merges them into one
    `rankings.jsonl` in split order, as one process would have written it, and writes the
    metrics. Every rank returns them."""
    dist = dist or Distributed()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out / "run.json", settings)  # every rank: the same content, written atomically
    own = out / (f"rankings.rank{dist.rank}.jsonl" if dist.enabled else RANKINGS)
    done = _ranked_so_far(out, own)
    todo = dist.shard([i for i in range(len(examples)) if i not in done])
    dist.barrier()  # every rank has read the files before any appends to its own
    catalog = dataset.catalog
    error = None
    try:
        if todo:
            _rank_into(own, todo, examples, catalog, rank, batch_size, split, dist, progress)
    except Exception as caught:  # raised by `agree`, once every rank knows
        error = caught
    dist.agree(error, "ranking")
    error = None
    if dist.is_main:
        try:
            _merge_rankings(out, len(examples))
        except Exception as caught:
            error = caught
    dist.agree(error, "merging the ranks' rankings")
    lines = complete_jsonl_lines(out / RANKINGS)
    ranked = [[catalog.index_of(item) if item is not None else -1 for item in lines[i]["ranked"]]
              for i in range(len(examples))]
    metrics = {**split_metrics(catalog, examples, ranked, training_data(dataset, split).sequences),
               "settings": settings}
    if dist.is_main:
        write_json(out / "metrics.json", metrics)
        write_atomically(out / "metrics.md",
                         metrics_table({name: metrics}, extra=("coverage@10", "invalid_rate")) + "\n")
    return metrics


def _rank_into(own: Path, todo: list[int], examples: list[Example], catalog, rank, batch_size, split: str,
               dist: Distributed, progress: bool) -> None:
    """Rank the examples `todo`, appending their lines to `own` batch by batch (fsynced)."""
    size = batch_size(todo) if callable(batch_size) else batch_size
    shard = f" (rank {dist.rank} of {dist.world_size})" if dist.enabled else ""
    with open(own, "a", encoding="utf-8") as sink, \
            tqdm(total=len(todo), desc=f"evaluating {split}{shard}", unit="example",
                 disable=not (progress and dist.is_main)) as bar:
        for start in range(0, len(todo), size):
            batch = todo[start:start + size]
            ranked, scores = rank(batch)
            for row, i in enumerate(batch):
                line = ranking_row(i, examples[i], [catalog.ids[p] if p >= 0 else None for p in ranked[row]],
                                   [round(float(s), 5) if np.isfinite(s) else None for s in scores[row]])
                sink.write(json.dumps(line, ensure_ascii=False) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))


def _ranked_so_far(out: Path, own: Path) -> dict:
    """The complete lines of rankings.jsonl and of every rank's file, by example; only this
    rank's own file has a torn last line cut (another rank may be writing its own)."""
    done = {}
    for path in [out / RANKINGS, *sorted(out.glob("rankings.rank*.jsonl"))]:
        done.update(complete_jsonl_lines(path, repair=path == own))
    return done


def _merge_rankings(out: Path, examples: int) -> None:
    """One rankings.jsonl in split order from the ranks' files (then deleted)."""
    parts = sorted(out.glob("rankings.rank*.jsonl"))
    if not parts:
        return
    lines = {}
    for path in [out / RANKINGS, *parts]:
        lines.update(complete_jsonl_lines(path, repair=False))
    missing = [i for i in range(examples) if i not in lines]
    if missing:
        raise RuntimeError(f"{out}: examples {missing[:5]} were ranked by no rank")
    write_atomically(out / RANKINGS, [json.dumps(lines[i], ensure_ascii=False) + "\n" for i in range(examples)])
    for path in parts:
        path.unlink()


def rank_prompts(model, tokenizer, index: CatalogIndex, prompts: list[str], num_beams: int,
                 exclude: list[list[int]] | None = None) -> tuple[list[list[int]], list[list[float]]]:
    """Constrained beam search over `prompts` (one batch): per prompt, the `num_beams` ranked
    items (index item ids, catalog positions for `CatalogIndex.from_catalog`; -1 = empty
    slot) and their scores, best first. `exclude[p]`: items never returned for prompt p.
    Used by `evaluate` and by the trainers' periodic validation (`rere.trainer.validation`)."""
    device = next(model.parameters()).device
    ids, mask = left_pad(tokenizer(prompts, add_special_tokens=False).input_ids)
    with torch.no_grad():
        out = beam_search(model, index, ids.to(device), mask.to(device),
                          num_beams=num_beams, exclude_items=exclude)
    return out.item_ids.tolist(), out.scores.tolist()


def ranking_row(i: int, example: Example, ranked: list, scores: list | None = None) -> dict:
    """One line of rankings.jsonl (the same for `rere evaluate` and `rere baseline`)."""
    row = {"example": i, "user": example.user, "target": example.target, "ranked": ranked}
    return row if scores is None else {**row, "scores": scores}


def split_metrics(catalog: Catalog, examples: list[Example], ranked, training_sequences, ks=KS) -> dict:
    """`ranking_metrics` of ranked catalog positions (-1: empty) for these examples, with item
    popularity counted over `training_sequences`: what a baseline evaluated on this split may
    train on (`training_data`, never a target of the split), so that head/tail means the same
    in every row of a table, LLM or baseline."""
    return ranking_metrics(ranked, [catalog.index_of(e.target) for e in examples], catalog, ks,
                           train_counts=item_counts(training_sequences, catalog),
                           history_lengths=[len(e.history) for e in examples])


def auto_batch_size(model, num_beams: int, prompt_tokens: int, new_tokens: int, device: torch.device,
                    budget_bytes: int | None = None) -> int:
    """Prompts per beam search that fit `budget_bytes` (default: half the free GPU memory,
    or 2 GiB on the CPU): each prompt holds its prompt's keys and values once, each beam its
    generated ones, and each beam a row of full-vocabulary logits (fp32)."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    per_token = 2 * config.num_hidden_layers * heads * head_dim * element
    per_prompt = per_token * (prompt_tokens + num_beams * new_tokens) + num_beams * config.vocab_size * 4 * 3
    if budget_bytes is None:
        budget_bytes = torch.cuda.mem_get_info(device)[0] // 2 if device.type == "cuda" else CPU_BUDGET_BYTES
    return max(1, int(budget_bytes // per_prompt))
