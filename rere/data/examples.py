"""What the LLM trainers fit: (history, next item) examples that never contain an evaluated target.

With a "train" split its rows are the examples and "valid" is the early-stopping set.
Without one (the ReRe authors' train split is not always at hand: the shared Amazon data
carries only their valid and test), the leak-free training
sequences of `rere.data.training_sequences.training_data` (histories only, cut after each user's first
evaluated row) are cut into sliding windows, and each sequence's last item is held out for
early stopping (`holdout_last`), exactly as the baselines do, so the table compares like
with like. The trainers' `train_examples` setting keeps a seeded sample of them (`train_sample`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rere.data.training_sequences import holdout_last, training_data
from rere.data.dataset import Dataset, Example, sample_examples


@dataclass(frozen=True)
class TrainingExamples:
    train: list[Example]
    valid: list[Example]
    source: str
    warning: str | None = None


def training_examples(dataset: Dataset, evaluated: str = "test", max_history: int = 10) -> TrainingExamples:
    """Training and early-stopping examples for a model evaluated on split `evaluated`."""
    if "train" in dataset.splits:
        # Evaluating on "valid" itself leaves no clean early-stopping set: none is used.
        valid = dataset.splits.get("valid", []) if evaluated != "valid" else []
        train = [Example(e.user, tuple(e.history[-max_history:]), e.target) for e in dataset.splits["train"]]
        return TrainingExamples(train, valid, "split 'train'")
    data = training_data(dataset, evaluated)
    sequences, valid = holdout_last(data.sequences)
    train = [Example(f"sequence-{n}", tuple(sequence[max(0, t - max_history):t]), sequence[t])
             for n, sequence in enumerate(sequences) for t in range(1, len(sequence))]
    if not train:
        raise ValueError(f"no training examples: the sequences of {data.source} are all single items")
    return TrainingExamples(train, [Example(e.user, e.history[-max_history:], e.target) for e in valid],
                            f"sliding windows over {data.source}", data.warning)


def train_sample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """The trainers' `train_examples` setting: a seeded random sample of `limit` training
    examples, drawn as every sample of rows is (`sample_examples`: kept in order; all of them
    when `limit` is None or not smaller): the rows themselves, no copy of the dataset."""
    if limit is not None and limit < 1:
        raise ValueError(f"train_examples must be >= 1 or None (all of them), got {limit}")
    return sample_examples(examples, limit, seed)


def examples_for(dataset: Dataset, settings) -> TrainingExamples:
    """A trainer's rows as its settings (a `rere.trainer.run_settings.RunSettings`) choose
    them: `training_examples` for `evaluated_split` and `max_history`, then a seeded sample
    of `train_examples` training rows and one of `eval_examples` validation rows (the same
    draws in every trainer)."""
    data = training_examples(dataset, settings.evaluated_split, settings.max_history)
    return dataclasses.replace(data, train=train_sample(data.train, settings.train_examples, settings.seed),
                               valid=sample_examples(data.valid, settings.eval_examples, settings.seed))
