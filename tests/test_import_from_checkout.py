"""Importing rere from the repository root, as a script, notebook or `python -m pytest`
started in the checkout does: the current directory comes first on sys.path there, so a
top-level folder of the checkout shadows any installed module of the same name. (A
top-level `kernels/` once shadowed Hugging Face's `kernels`, which transformers >= 5.25
imports, and every such import failed.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rere_and_transformers_import_from_the_repository_root():
    code = ("import rere.sampler, rere.kernels, rere.trainer\n"
            "from transformers import LlamaForCausalLM, Qwen2ForCausalLM\n"
            "import pathlib, rere\n"
            "print(pathlib.Path(rere.kernels.__file__).parent.parent.name)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "rere"  # the package's own kernels


def test_no_top_level_folder_shadows_an_installed_module():
    """Every top-level folder of the checkout that Python could import is rere itself or a
    folder no installed distribution names (tests and benchmarks are run, not imported)."""
    import importlib.metadata

    installed = set(importlib.metadata.packages_distributions())  # top-level import names
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert not (folders - {"rere"}) & installed
