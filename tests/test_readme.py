"""The README's self-contained Python examples run as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
# Examples that read the shared data or need a GPU are exercised by their own tests.
RUNNABLE = [b for b in BLOCKS if "../shared" not in b and "cuda" not in b]


def test_there_is_a_runnable_example():
    assert RUNNABLE


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"example{i}" for i in range(len(RUNNABLE))])
def test_example_runs(block, capsys):
    exec(compile(block, str(README), "exec"), {})
    assert capsys.readouterr().out  # it printed its results
