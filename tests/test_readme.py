"""The self-contained Python examples of the README and of docs/ run as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(page, block) for page in PAGES for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]
# Examples that read the shared data or need a GPU are exercised by their own tests.
RUNNABLE = [(page, b) for page, b in BLOCKS if "../shared" not in b and "cuda" not in b]


def test_there_is_a_runnable_example():
    assert RUNNABLE


@pytest.mark.parametrize("page, block", RUNNABLE, ids=[f"{page.stem}-example{i}" for i, (page, _) in enumerate(RUNNABLE)])
def test_example_runs(page, block, capsys):
    exec(compile(block, str(page), "exec"), {})
    assert capsys.readouterr().out  # it printed its results
