"""benchmarks/design_space.py on a tiny compact demo: every row is scored on the same test
rows, each variant runs once per seed with its one change, and a second run reuses what
the first finished."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rere.demo.run import run_demo
from test_demo import COMPACT, write_movielens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import design_space  # noqa: E402


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    out = root / "demo"
    run_demo(out, source=str(write_movielens(root / "ml")), settings=COMPACT)
    return out


def test_the_study_runs_each_variant_per_seed_on_the_same_rows(finished_demo, tmp_path, capsys):
    argv = [str(finished_demo), "-o", str(tmp_path / "study"), "--seeds", "0", "1", "--steps", "2",
            "--test-examples", "5", "--only", "rule reward only", "G=4"]
    rows = design_space.main(argv)

    assert list(rows) == ["popularity", "SASRec", "SFT", "rule reward only", "G=4"]
    assert [len(runs) for runs in rows.values()] == [1, 2, 1, 2, 2]
    assert all(run["examples"] == 5 for runs in rows.values() for run in runs)
    for name in ("popularity", "SASRec", "rule reward only", "G=4"):
        for run in rows[name]:
            assert run["vs_sft"]["low"] <= run["vs_sft"]["ndcg@10"] <= run["vs_sft"]["high"]
    trained = (tmp_path / "study" / "g-4" / "seed-1" / "train" / "config.yaml").read_text()
    assert "num_generations: 4" in trained and "seed: 1" in trained and "max_steps: 2" in trained
    assert "- rule\n" in (tmp_path / "study" / "rule-reward-only" / "seed-0" / "train" / "config.yaml").read_text()
    table = (tmp_path / "study" / "design_space.md").read_text()
    assert "| G=4 | 2 |" in table and "| SFT | 1 |" in table

    capsys.readouterr()
    again = design_space.main(argv)  # everything is there: nothing trains again
    assert ", seed 0: 2 steps" not in capsys.readouterr().out and again == rows


def test_the_study_needs_a_finished_compact_demo(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "settings.json").write_text(json.dumps({"model": "smollm2"}))
    with pytest.raises(ValueError, match="not a demo of the compact model"):
        design_space.main([str(tmp_path / "demo"), "-o", str(tmp_path / "out")])
