"""Supervised fine-tuning data: tokenised (prompt, completion) sequences, length-bucketed
batches whose order is a pure function of (seed, epoch), and right-padded collation.

A sequence is the prompt's tokens followed by the item's completion tokens, EOS included,
each tokenised on its own and concatenated: exactly the ids the model is given and must
generate at evaluation, where the prompt is tokenised alone and beam search walks the
catalog index's sequences. The completions come from `Catalog.tokenize` (the very tokens
the index holds), which also checks that the prompt's closing context never merges with
an item's text. Labels are -100 on the prompt and the padding: the loss covers the
completion only.

Batches: each epoch draws a permutation from `numpy.random.default_rng((seed, epoch))`,
cuts it into chunks of `CHUNK_BATCHES` batches, sorts each chunk by length (so a batch
pads little) and cuts it into batches, then shuffles the batch order with the same
generator (so long and short batches alternate). A data state {"epoch", "batch"} (batches
of that epoch already trained on) therefore resumes at exactly the same batch.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from rere.catalog import TokenizedCatalog
from rere.data.dataset import Example
from rere.prompts import Prompter

CHUNK_BATCHES = 50  # batches per length-sorted chunk: long enough to bucket, short enough to stay random
IGNORE_INDEX = -100  # label of positions outside the loss (PyTorch's and Hugging Face's convention)
_TOKENIZE_BATCH = 1024  # prompts per tokenizer call


@dataclass(frozen=True)
class SFTExamples:
    """Token ids of every training sequence and where its completion starts."""

    sequences: list[np.ndarray]  # int64: prompt + completion + EOS
    prompt_lengths: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.sequences), dtype=np.int64, count=len(self.sequences))

    @property
    def completion_lengths(self) -> np.ndarray:
        """Tokens in each sequence's loss (the completion, EOS included)."""
        return self.lengths - self.prompt_lengths


def tokenize_examples(examples: list[Example], prompter: Prompter, tokenizer,
                      completions: TokenizedCatalog) -> SFTExamples:
    """Sequences for `examples`: the prompt (`prompter`, which applies max_prompt_tokens)
    tokenised alone, then the target's completion from `completions`, the catalog as
    tokenised for the index (`catalog.tokenize(tokenizer, template=prompter.completion_format,
    context=prompter.template.context)`)."""
    if len(completions) != len(prompter.catalog):
        raise ValueError(f"completions cover {len(completions)} items, the catalog has {len(prompter.catalog)}")
    if completions.eos_token_id is None:
        raise ValueError("the catalog was tokenised without EOS: the model would never learn where an item ends")
    sequences, prompt_lengths = [], []
    for start in range(0, len(examples), _TOKENIZE_BATCH):
        batch = examples[start:start + _TOKENIZE_BATCH]
        prompts = tokenizer([prompter.prompt(e.history) for e in batch], add_special_tokens=False)["input_ids"]
        for example, prompt in zip(batch, prompts):
            completion = completions.sequence(prompter.catalog.index_of(example.target))
            sequences.append(np.concatenate([np.asarray(prompt, dtype=np.int64), completion.astype(np.int64)]))
            prompt_lengths.append(len(prompt))
    return SFTExamples(sequences, np.asarray(prompt_lengths, dtype=np.int64))


def batch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                chunk_batches: int = CHUNK_BATCHES) -> list[np.ndarray]:
    """One epoch's batches (arrays of example indices), length-bucketed as the module says;
    the same (seed, epoch) always gives the same batches. Every example appears once; there
    are ceil(n / batch_size) batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(len(lengths))
    chunk = chunk_batches * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def optimizer_steps(batches: list[np.ndarray], start: int, world_size: int,
                    grad_accum: int) -> Iterator[tuple[int, list[list[np.ndarray]]]]:
    """Cut an epoch's batches, from batch `start` on, into optimizer steps. Each step is a
    list of micro-steps (at most `grad_accum`), each micro-step one batch per rank (rank r
    takes [r]); yields (batches of the epoch consumed after this step, micro-steps). The
    epoch's last step may have fewer micro-steps; the fewer than `world_size` batches left
    at the end, which cannot give every rank one, are skipped."""
    per_step = world_size * grad_accum
    usable = start + (len(batches) - start) // world_size * world_size
    for first in range(start, usable, per_step):
        taken = batches[first:min(first + per_step, usable)]
        yield first + len(taken), [taken[m:m + world_size] for m in range(0, len(taken), world_size)]


def steps_per_epoch(n_batches: int, world_size: int, grad_accum: int) -> int:
    """How many steps `optimizer_steps` yields for a whole epoch."""
    return -(-(n_batches // world_size) // grad_accum)


def collate(examples: SFTExamples, indices, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask, and labels (the input ids, -100 on the prompt
    and padding; unshifted, as Hugging Face's `labels`)."""
    rows = [examples.sequences[i] for i in indices]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (i, ids) in enumerate(zip(indices, rows)):
        ids = torch.from_numpy(ids)
        input_ids[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
        prompt = int(examples.prompt_lengths[i])
        labels[row, prompt:len(ids)] = ids[prompt:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
