"""The non-LLM baselines: most-popular, SASRec, what they train on, and `rere baseline`."""
from __future__ import annotations

import argparse
import json
import random
import warnings

import numpy as np
import pytest

from rere.baselines import Popularity, SASRec, SASRecConfig
from rere.catalog import Catalog
from rere.commands import baseline as baseline_command
from rere.data import Dataset, Example
from rere.data.training_sequences import holdout_last, item_counts, merge_windows, training_data
from rere.metrics import target_ranks

LETTERS = Catalog.from_lists(list("abcdef"), [f"item {c}" for c in "abcdef"])


def example(history: str, target: str, user: str = "u") -> Example:
    return Example(user, tuple(history), target)


# -- most popular ------------------------------------------------------------------------


def test_popularity_ranks_by_count_with_ties_in_catalog_order():
    model = Popularity(LETTERS).fit([("c", "b"), ("b", "e"), ("d",)])
    assert model.counts.tolist() == [0, 2, 1, 1, 1, 0]
    ranked = model.rank([example("bd", "a"), example("", "f")], 4)
    assert ranked.dtype == np.int64
    assert ranked.tolist() == [[1, 2, 3, 4]] * 2  # b (2), then c, d, e (1 each) by position


def test_popularity_can_exclude_the_history():
    model = Popularity(LETTERS, exclude_history=True).fit([("c", "b"), ("b", "e"), ("d",)])
    assert model.rank([example("bd", "a"), example("", "f")], 4).tolist() == [[2, 4, 0, 5], [1, 2, 3, 4]]
    assert model.rank([example("abcde", "f")], 2).tolist() == [[5, -1]]  # only f is left


def test_popularity_rejects_k_outside_the_catalog():
    model = Popularity(LETTERS).fit([("a",)])
    with pytest.raises(ValueError, match="k must be in 1..6"):
        model.rank([example("a", "b")], 7)


# -- training sequences ------------------------------------------------------------------


def test_merge_windows_undoes_sliding_windows():
    assert merge_windows([("a",), ("a", "b"), ("a", "b", "c"), ("b", "c", "d"), ("x", "y")]) == tuple("abcdxy")
    assert merge_windows([]) == ()


def no_train_split() -> Dataset:
    """u1 has valid rows then test rows (sliding windows of 3); u2 valid only; u3 test only."""
    valid = [example("a", "b", "u1"), example("ab", "c", "u1"), example("e", "f", "u2")]
    test = [example("abc", "d", "u1"), example("bcd", "e", "u1"), example("cde", "f", "u1"),
            example("fa", "c", "u3"), example("ac", "b", "u3")]
    return Dataset(LETTERS, {"valid": valid, "test": test}, source="test")


def test_without_a_train_split_the_evaluated_targets_are_never_trained_on():
    dataset = no_train_split()
    with pytest.warns(UserWarning, match="no 'train' split"):
        data = training_data(dataset, "test")
    # u1 stops after its first test row: its later histories hold the test targets d and e.
    assert data.sequences == (tuple("abc"), ("e",), tuple("fa"))
    for sequence, user in zip(data.sequences, ("u1", "u2", "u3")):
        targets = {e.target for e in dataset.splits["test"] if e.user == user}
        assert not targets & set(sequence), user
    assert data.validation is None and "no 'train' split" in data.summary()["warning"]
    assert data.summary()["interactions"] == 6


def test_evaluating_valid_ignores_the_later_splits():
    with pytest.warns(UserWarning):
        data = training_data(no_train_split(), "valid")
    assert data.sequences == (("a",), ("e",))


def test_a_train_split_is_used_whole_and_valid_is_for_early_stopping():
    train = [example("a", "b", "u1"), example("ab", "c", "u1"), example("d", "e", "u2")]
    valid = [example("abc", "d", "u1")]
    dataset = Dataset(LETTERS, {"train": train, "valid": valid, "test": [example("abcd", "e", "u1")]}, "t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = training_data(dataset, "test")
    assert data.sequences == (tuple("abc"), tuple("de"))
    assert data.validation == valid and data.warning is None
    assert training_data(dataset, "valid").validation is None  # test is not clean for early stopping
    with pytest.raises(ValueError, match="'train' is what baselines train on"):
        training_data(dataset, "train")
    with pytest.raises(KeyError, match="no split 'dev'"):
        training_data(dataset, "dev")


def test_holdout_last_and_item_counts():
    sequences, held = holdout_last([tuple("abc"), ("d",)])
    assert sequences == (tuple("ab"), ("d",))
    assert [(e.history, e.target) for e in held] == [(tuple("ab"), "c")]
    assert item_counts([tuple("aba"), ("f",)], LETTERS).tolist() == [2, 1, 0, 0, 0, 1]


# -- SASRec ------------------------------------------------------------------------------

N_TOY = 20
TOY = Catalog.from_lists([str(i) for i in range(N_TOY)], [f"toy item {i}" for i in range(N_TOY)])
TOY_CONFIG = SASRecConfig(max_len=5, hidden=32, layers=1, heads=2, dropout=0.0, lr=0.01, batch_size=32,
                          epochs=40, patience=3, seed=0)


def cycle(start: int, length: int) -> tuple[str, ...]:
    """Items start, start + 1, ... (mod N_TOY): item i is always followed by item i + 1."""
    return tuple(str((start + j) % N_TOY) for j in range(length))


def toy_examples(seed: int, n: int) -> list[Example]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sequence = cycle(rng.randrange(N_TOY), rng.randint(2, 5))
        rows.append(Example(f"u{i}", sequence[:-1], sequence[-1]))
    return rows


def hit_rate_at_1(model: SASRec, examples: list[Example]) -> float:
    ranks = target_ranks(model.rank(examples, 1), [TOY.index_of(e.target) for e in examples], TOY)
    return float((ranks == 0).mean())


@pytest.fixture(scope="module")
def toy_sasrec() -> tuple[SASRec, dict]:
    rng = random.Random(1)
    sequences = [cycle(rng.randrange(N_TOY), rng.randint(3, 12)) for _ in range(60)]
    model = SASRec(TOY, TOY_CONFIG)
    return model, model.fit(sequences, validation=toy_examples(2, 40), progress=False)


def test_sasrec_learns_a_deterministic_next_item_pattern(toy_sasrec):
    model, fitted = toy_sasrec
    held_out = toy_examples(3, 100)
    assert hit_rate_at_1(SASRec(TOY, TOY_CONFIG), held_out) < 0.3  # untrained: about 1 / 20
    assert hit_rate_at_1(model, held_out) >= 0.95
    assert fitted["best_valid_NDCG@10"] >= 0.95 and fitted["epochs_run"] <= TOY_CONFIG.epochs
    assert [e["epoch"] for e in fitted["log"]] == list(range(1, fitted["epochs_run"] + 1))


def test_sasrec_rank_shape_and_history_exclusion(toy_sasrec):
    model, _ = toy_sasrec
    examples = toy_examples(4, 7) + [Example("empty", (), "3")]
    ranked = model.rank(examples, N_TOY)
    assert ranked.shape == (8, N_TOY) and ranked.dtype == np.int64
    assert all(sorted(row) == list(range(N_TOY)) for row in ranked.tolist())  # a full permutation
    model.exclude_history = True
    try:
        excluded = model.rank(examples, N_TOY)
    finally:
        model.exclude_history = False
    for row, e in zip(excluded.tolist(), examples):
        history = {TOY.index_of(item) for item in e.history}
        assert not history & set(row) and row.count(-1) == len(history)


def test_sasrec_save_load_round_trip(toy_sasrec, tmp_path):
    model, _ = toy_sasrec
    examples = toy_examples(5, 30)
    model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.pt"]
    loaded = SASRec.load(tmp_path / "model", TOY)
    assert loaded.config == model.config
    assert np.array_equal(loaded.rank(examples, 10), model.rank(examples, 10))
    other = Catalog.from_lists([str(i) for i in range(N_TOY - 1, -1, -1)], [f"x{i}" for i in range(N_TOY)])
    with pytest.raises(ValueError, match="another catalog"):
        SASRec.load(tmp_path / "model", other)
    with pytest.raises(FileNotFoundError, match="no saved SASRec model"):
        SASRec.load(tmp_path, TOY)


def test_sasrec_config_names_a_bad_argument():
    with pytest.raises(ValueError, match="max_len must be a positive integer"):
        SASRecConfig(max_len=0)
    with pytest.raises(ValueError, match="divisible by heads"):
        SASRecConfig(hidden=10, heads=3)


# -- rere baseline -----------------------------------------------------------------------


def run_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="rere")
    baseline_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


@pytest.mark.parametrize("kind, options", [("popularity", []),
                                           ("sasrec", ["--epochs", "2", "--hidden", "16", "--max-len", "5"])])
def test_command_writes_metrics_and_rankings(kind, options, tmp_path, capsys):
    splits = {"valid": toy_examples(6, 30), "test": toy_examples(7, 25)}
    Dataset(TOY, splits, source="toy").save(tmp_path / "data")
    out = tmp_path / "out"
    run_command(["baseline", kind, "--data", str(tmp_path / "data"), "--out", str(out), "--k", "5", *options])
    assert {"metrics.json", "metrics.md", "rankings.jsonl"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 25 and "HR@5" in metrics and "HR@10" not in metrics
    assert "no 'train' split" in metrics["training"]["warning"]
    rows = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    assert [r["example"] for r in rows] == list(range(25)) and all(len(r["ranked"]) == 5 for r in rows)
    assert rows[0]["target"] == splits["test"][0].target
    assert (out / "metrics.md").read_text().startswith("| method | HR@1 |")
    assert "| method |" in capsys.readouterr().out
    if kind == "sasrec":
        assert metrics["training"]["epochs_run"] <= 2 and (out / "model" / "config.json").exists()


def test_command_rejects_k_larger_than_the_catalog(tmp_path):
    Dataset(TOY, {"test": toy_examples(8, 5)}, source="toy").save(tmp_path / "data")
    with pytest.raises(ValueError, match="--k must be in 1..20"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_command(["baseline", "popularity", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                     "--k", "50"])
