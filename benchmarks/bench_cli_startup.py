"""How long a user waits for the `rere` command before it does anything.

    pytest benchmarks/bench_cli_startup.py --benchmark-enable --benchmark-columns=min,median,max

Each round is a fresh `python -m rere.cli ...` process: `rere --help` (every subcommand's
parser is built) and `rere index info` on a 1M-item index (a memory-mapped load, ~1 ms).
Neither imports torch or transformers (tests/test_cli_startup.py checks that); the floor is
the interpreter itself, measured alone as `python -c pass`.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from rere.index import CatalogIndex
from rere.synthetic import title_like_catalog


@pytest.fixture(scope="module")
def index_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "1m.rtrie"
    CatalogIndex.from_flat(*title_like_catalog(1_000_000), vocab_size=151_936).save(path)
    return path


def run(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, capture_output=True)


def test_python_alone(benchmark):
    benchmark.pedantic(run, args=("-c", "pass"), rounds=5, warmup_rounds=1)


def test_rere_help(benchmark):
    benchmark.pedantic(run, args=("-m", "rere.cli", "--help"), rounds=5, warmup_rounds=1)


def test_rere_index_info(benchmark, index_file):
    benchmark.pedantic(run, args=("-m", "rere.cli", "index", "info", str(index_file)), rounds=5, warmup_rounds=1)
