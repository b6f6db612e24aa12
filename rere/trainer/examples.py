"""What the LLM trainers fit: (history, next item) examples that never contain an evaluated target.

With a "train" split its rows are the examples and "valid" is the early-stopping set.
Without one (the ReRe authors published only valid and test), the leak-free training
sequences of `rere.baselines.training_data` (histories only, cut after each user's first
evaluated row) are cut into sliding windows, and each sequence's last item is held out for
early stopping (`holdout_last`), exactly as the baselines do, so the table compares like
with like.
"""
from __future__ import annotations

from dataclasses import dataclass

from rere.baselines.training_sequences import holdout_last, training_data
from rere.data.dataset import Dataset, Example


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
