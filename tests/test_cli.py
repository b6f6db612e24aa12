"""The `rere` command line and the package layout it relies on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import shared_path
from rere.cli import main
from rere.index import CatalogIndex


def test_kernels_folder_is_rere_kernels():
    import rere.kernels

    assert Path(rere.kernels.__file__).parent.name == "kernels"


def test_build_and_info_synthetic(tmp_path, capsys):
    out = tmp_path / "s.rtrie"
    assert main(["index", "build", "--synthetic", "3000", "-o", str(out)]) == 0
    assert CatalogIndex.load(out).num_items == 3000
    assert main(["index", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert info["items"] == 3000 and info["metadata"] == {"synthetic_items": 3000, "seed": 0}


def test_build_real_titles(tmp_path, capsys, qwen2):
    catalog = shared_path("amazon-industrial-rere/info.txt")
    out = tmp_path / "industrial.rtrie"
    assert main(["index", "build", str(catalog), "-o", str(out)]) == 0
    assert main(["index", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3,686" in text and "35 / 568" in text
    index = CatalogIndex.load(out)
    assert index.metadata["catalog_path"] == str(catalog.resolve())
    assert index.metadata["eos_token_id"] == qwen2.eos_token_id


def test_semantic_ids_need_the_flag(tmp_path, capsys):
    catalog = shared_path("amazon-industrial-sid/index.json")
    out = tmp_path / "sid.rtrie"
    assert main(["index", "build", str(catalog), "-o", str(out)]) == 1
    assert "560 semantic-ID tokens are not in the tokenizer's vocabulary" in capsys.readouterr().err
    assert not out.exists()
    assert main(["index", "build", str(catalog), "-o", str(out), "--add-missing-tokens"]) == 0
    assert CatalogIndex.load(out).num_items == 3686


@pytest.mark.parametrize(
    "args, message",
    [
        (["index", "info", "/nonexistent.rtrie"], "no index file at /nonexistent.rtrie"),
        (["index", "build", "{bad}", "-o", "{out}"], "bad.tsv:2: no tab"),
        (["index", "build", "{good}", "--tokenizer", "gpt9", "-o", "{out}"], "neither 'qwen2' nor a local directory"),
    ],
)
def test_errors_are_one_readable_line(tmp_path, capsys, args, message):
    bad = tmp_path / "bad.tsv"
    bad.write_text("A title\t1\nno tab here\n")
    good = tmp_path / "good.tsv"
    good.write_text("A title\t1\n")
    args = [a.format(bad=bad, good=good, out=tmp_path / "x.rtrie") for a in args]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("rere: error: ") and message in err
    assert not (tmp_path / "x.rtrie").exists()
