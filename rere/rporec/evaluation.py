"""Recommending with RPORec: reason (greedy), encode prompt + reasoning, retrieve with the head.

`recommend` is the one path from prompts to ranked items, used by stage 2's validation and
by `evaluate_rporec`, which `rere evaluate --method rporec` runs. `evaluate_rporec` goes
through `rere.evaluation.evaluate_rankings`, the loop behind ReRe's evaluation: the same
rankings.jsonl (resumable), metrics.json and metrics.md, so the two methods' rows compare
on the same split with the same metric code. It also keeps each example's reasoning in
OUT/reasonings/ (resumable the same way).

Two models take part: the generator writes the reasoning (stage 2's policy, or the stage-1
LLM), the encoder reads prompt + reasoning for the head (always the LLM the head was
trained with; its digest is checked against the head's).
"""
from __future__ import annotations

import contextlib
import os

import torch

from rere.data.dataset import Dataset
from rere.data.dataset import sample_examples
from rere.distributed import Distributed
from rere.evaluation import evaluate_rankings
from rere.rporec.encoding import encode_all, model_fingerprint, pad_id
from rere.rporec.reasoning import ReasoningCache, generate_reasonings, reasoning_prompter, user_sequence
from rere.rporec.rec_head import RecHead


def check_encoder(head: RecHead, encoder) -> None:
    """The head reads the states of the LLM it was trained with, and no other."""
    expected, found = head.provenance.get("encoder"), model_fingerprint(encoder)
    if expected is not None and expected != found:
        spec = head.provenance.get("encoder_spec")
        raise ValueError(f"this RecHead was trained on the states of another LLM (digest {expected}, this one "
                         f"{found}); encode with the stage-1 LLM{f' ({spec})' if spec else ''}")


@torch.no_grad()
def recommend(generator, encoder, tokenizer, head: RecHead, prompts: list[list[int]], k: int, *,
              items: torch.Tensor | None = None, reasoning: bool = True, max_new_tokens: int = 128,
              generations: list | None = None, exclude: list[list[int]] | None = None,
              autocast=contextlib.nullcontext) -> tuple[list[list[int]], list[list[float]], list]:
    """(ranked catalog positions [P][k], scores [P][k], the reasoning of each prompt or None).

    `generations[p]`: a reasoning already written for prompt p (else greedy decoding with the
    generator, when `reasoning`)."""
    if reasoning and generations is None:
        with autocast():
            generations = [g[0] for g in generate_reasonings(generator, tokenizer, prompts, do_sample=False,
                                                             max_new_tokens=max_new_tokens)]
    generations = generations if reasoning else [None] * len(prompts)
    eos = tokenizer.eos_token_id
    pad = pad_id(tokenizer)
    with autocast():
        states = encode_all(encoder, [user_sequence(p, g, eos) for p, g in zip(prompts, generations)],
                            [len(p) for p in prompts], pooling=head.config.pooling, pad_token_id=pad)
    device = head.item_encodings.device
    scores, ranked = head.recommend(states.to(device), k, items=items, exclude=exclude)
    return ranked.tolist(), scores.tolist(), generations


def evaluate_rporec(generator, encoder, tokenizer, head: RecHead, dataset: Dataset, out_dir: str | os.PathLike,
                    split: str = "test", *, k: int = 50, reasoning: bool = True, max_new_tokens: int = 128,
                    batch_size: int = 16, max_prompt_tokens: int | None = None, exclude_history: bool = False,
                    limit: int | None = None, sample_seed: int = 0, name: str = "RPORec",
                    progress: bool = True, dist: Distributed | None = None) -> dict:
    """Rank `k` items for every example of `split` (`limit` of them, drawn as
    `rere.data.dataset.sample_examples` draws) and score them; the files and metrics of
    `rere.evaluation.evaluate`, under torchrun too (`dist`: each rank caches its own
    reasonings)."""
    check_encoder(head, encoder)
    catalog = dataset.catalog
    if head.config.num_items != len(catalog) or head.provenance.get("catalog") not in (None, catalog.fingerprint()):
        raise ValueError(f"the RecHead was trained on another catalog ({head.config.num_items} items) than "
                         f"{dataset.source}'s ({len(catalog)} items)")
    examples = sample_examples(dataset.split(split), limit, sample_seed)
    prompter = reasoning_prompter(dataset, tokenizer, max_prompt_tokens)
    settings = {"name": name, "method": "rporec", "split": split, "examples": len(examples), "k": k,
                "reasoning": reasoning, "max_new_tokens": max_new_tokens, "exclude_history": exclude_history,
                "max_prompt_tokens": max_prompt_tokens, "generator": model_fingerprint(generator),
                "head": head.provenance, "dataset": dataset.source, "limit": limit,
                "sample_seed": sample_seed if limit is not None else None}
    folder = os.path.join(out_dir, "reasonings", *([f"rank{dist.rank}"] if dist is not None and dist.enabled else []))
    cache = ReasoningCache(folder, settings) if reasoning else None
    device = head.item_encodings.device
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    items = head.item_vectors()

    def rank(batch: list[int]):
        prompts = tokenizer([prompter.prompt(examples[i].history) for i in batch], add_special_tokens=False)["input_ids"]
        generations = None
        if cache is not None:
            with autocast():
                generations = [g[0] for g in cache.fill(generator, tokenizer, examples, dict(zip(batch, prompts)),
                                                        indices=batch, batch_size=len(batch), progress=False,
                                                        do_sample=False, max_new_tokens=max_new_tokens)]
        exclude = [[catalog.index_of(h) for h in examples[i].history] for i in batch] if exclude_history else None
        ranked, scores, _ = recommend(generator, encoder, tokenizer, head, prompts, k, items=items,
                                      reasoning=reasoning, generations=generations, exclude=exclude,
                                      autocast=autocast)
        return ranked, scores

    return evaluate_rankings(dataset, examples, out_dir, split, settings, rank, batch_size, name=name,
                             progress=progress, dist=dist)
