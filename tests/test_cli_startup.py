"""`rere --help` and `rere index info` must not import torch or transformers: together they
were ~3.5 s of every call (benchmarks/bench_cli_startup.py measures the wait)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from rere.index import CatalogIndex

HEAVY = ("torch", "transformers")

PROBE = """
import json, sys
{preamble}
from rere.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([name for name in {heavy} if name in sys.modules]), file=sys.stderr)
"""


def heavy_imports(*args: str, preamble: str = "") -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, preamble=preamble), *args],
                          capture_output=True, text=True, timeout=120)
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_help_and_index_info_load_neither_torch_nor_transformers(tmp_path):
    assert heavy_imports("--help") == []
    assert heavy_imports("rporec", "stage1", "--help") == []
    path = tmp_path / "tiny.rtrie"
    CatalogIndex.from_flat(np.array([5, 6, 2, 5, 7, 2]), np.array([0, 3, 6]), vocab_size=10).save(path)
    assert heavy_imports("index", "info", str(path)) == []
    assert heavy_imports("--help", preamble="import torch") == ["torch"]  # the probe sees an import
