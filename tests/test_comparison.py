"""Evaluation you can trust at small sizes: a seeded random --limit draw, and the paired
bootstrap comparison of two runs (`rere compare`)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rere.catalog import Catalog
from rere.cli import main
from rere.comparison import compare_rankings, paired_bootstrap
from rere.data.dataset import Example
from rere.data.dataset import sample_examples


def test_limit_draws_a_seeded_sample_in_split_order():
    examples = [Example(f"u{i // 5}", ("a",), str(i)) for i in range(100)]  # 5 rows a user, grouped
    drawn = sample_examples(examples, 10, seed=0)
    assert drawn == sample_examples(examples, 10, seed=0) != sample_examples(examples, 10, seed=1)
    positions = [int(e.target) for e in drawn]
    assert positions == sorted(positions) and len(set(positions)) == 10
    assert len({e.user for e in drawn}) > 5  # not the first two users, as a prefix would be
    assert sample_examples(examples, None) == examples == sample_examples(examples, 500)
    assert sample_examples(examples, 0) == []  # a trainer's "no validation"
    with pytest.raises(ValueError, match="limit must be 0 or more"):
        sample_examples(examples, -1)


def test_the_interval_covers_the_truth_and_excludes_zero_only_for_a_real_difference():
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.1
    better = base | (rng.random(2000) < 0.05)  # B hits wherever A does, and 5% more
    d = paired_bootstrap(base, better, "hr@10")
    assert d.low > 0 and d.low < d.difference < d.high and abs(d.difference - (better.mean() - base.mean())) < 1e-12
    same = paired_bootstrap(base, rng.permutation(base), "hr@10")  # equal means, unpaired noise
    assert same.low < 0 < same.high
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap(base, base[:5], "hr@10")


def write_run(folder, rows):
    folder.mkdir()
    with open(folder / "rankings.jsonl", "w") as f:
        for i, (user, target, ranked) in enumerate(rows):
            f.write(json.dumps({"example": i, "user": user, "target": target, "ranked": ranked}) + "\n")


def test_compare_runs_pairs_examples_and_counts_duplicate_titles_as_hits(tmp_path, capsys):
    catalog = Catalog.from_lists(["x", "y", "z", "w"], ["Pen", "Pen", "Cup", "Box"])  # x and y share a title
    rows_a = [("u1", "x", ["z", "w"]), ("u2", "z", ["w", "z"])]
    rows_b = [("u1", "x", ["y", "z"]), ("u2", "z", ["z", "w"])]
    write_run(tmp_path / "a", rows_a)
    write_run(tmp_path / "b", rows_b)
    by_id = {d.metric: d for d in compare_rankings(tmp_path / "a", tmp_path / "b", k=2)}
    assert by_id["hr@2"].a == 0.5 and by_id["hr@2"].b == 0.5  # "y" is not the target's id
    by_title = {d.metric: d for d in compare_rankings(tmp_path / "a", tmp_path / "b", catalog=catalog, k=2)}
    assert by_title["hr@2"].b == 1.0  # but it is the target's title
    assert by_title["ndcg@2"].a == pytest.approx((1 / np.log2(3)) / 2) and by_title["ndcg@2"].b == 1.0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--k", "2", "-o", str(tmp_path / "d.json")]) == 0
    assert "hr@2" in capsys.readouterr().out and json.loads((tmp_path / "d.json").read_text())[0]["examples"] == 2
    write_run(tmp_path / "c", [("u1", "x", ["y"]), ("u3", "z", ["z"])])
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "line 2" in capsys.readouterr().err


def test_baselines_draw_the_rows_evaluate_draws(tmp_path):
    from rere.data.dataset import Dataset

    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(30)]
    rows = {split: [Example(f"u{u}", tuple(rng.choice(ids, 4)), str(rng.choice(ids))) for u in range(40)]
            for split in ("train", "test")}
    dataset = Dataset(Catalog.from_lists(ids, [f"t{k}" for k in range(30)]), rows, "synthetic")
    dataset.save(tmp_path / "data")
    assert main(["baseline", "popularity", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "pop"),
                 "--limit", "7", "--sample-seed", "3", "--k", "10"]) == 0
    lines = [json.loads(line) for line in open(tmp_path / "pop" / "rankings.jsonl")]
    assert [(line["user"], line["target"]) for line in lines] == [
        (e.user, e.target) for e in sample_examples(rows["test"], 7, seed=3)]
