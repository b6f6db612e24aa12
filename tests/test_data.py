"""The prepared-dataset folder, the ReRe CSV loader and the semantic-ID loader."""
from __future__ import annotations

import json

import pytest

from rere.catalog import Catalog
from rere.cli import main
from rere.data import Dataset, Example
from rere.data.rere_csv import load_rere_csv
from rere.data.semantic_ids import load_semantic_ids

HEADER = ("user_id,item_asins,item_asin,history_item_id,item_id,history_item_title,item_title,"
          "history_rating,rating,history_timestamp,timestamp\n")


def small_dataset() -> Dataset:
    catalog = Catalog.from_lists(["a", "b", "c"], ["Red Pen", 'Blue "Ink"\tPen', "Pad"])
    examples = [Example("u1", ("a", "b"), "c", (1, 2), 3), Example("u2", (), "a")]
    return Dataset(catalog, {"train": examples, "test": examples[:1]}, source="hand", category="office product")


def write_rere_folder(folder, rows: list[str], info="Red Pen\t0\nBlue Pen\t1\nPad\t2\n"):
    folder.mkdir()
    (folder / "info.txt").write_text(info)
    (folder / "test.csv").write_text(HEADER + "".join(rows))
    return folder


GOOD_ROW = '''u1,"['x','y']",z,"[0, 1]",2,"['Red Pen', 'Blue Pen']",Pad,"[5, 4]",5,"[10, 11]",12\n'''


def test_save_load_round_trip(tmp_path):
    dataset = small_dataset()
    folder = dataset.save(tmp_path / "ds")
    assert sorted(p.name for p in folder.iterdir()) == ["catalog.json", "dataset.json", "test.jsonl", "train.jsonl"]
    loaded = Dataset.load(folder)
    assert loaded.catalog == dataset.catalog and loaded.splits == dataset.splits
    assert (loaded.source, loaded.category) == ("hand", "office product")
    assert json.loads((folder / "dataset.json").read_text())["splits"] == {"train": 2, "test": 1}


def test_save_never_leaves_half_a_folder(tmp_path, monkeypatch):
    dataset = small_dataset()
    dataset.save(tmp_path / "ds")
    with pytest.raises(FileExistsError):
        dataset.save(tmp_path / "ds")
    # A failure while writing leaves the old folder as it was and no staging folder behind.
    monkeypatch.setattr(Example, "to_json", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        dataset.save(tmp_path / "ds", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert Dataset.load(tmp_path / "ds").splits == dataset.splits


def test_examples_must_name_catalog_items():
    catalog = Catalog.from_lists(["a"], ["Pen"])
    with pytest.raises(ValueError, match=r"split 'test', example 0 \(user 'u'\): item 'zz' is not in the catalog"):
        Dataset(catalog, {"test": [Example("u", ("zz",), "a")]}, source="hand")


def test_rere_csv_reads_rows(tmp_path):
    dataset = load_rere_csv(write_rere_folder(tmp_path / "d", [GOOD_ROW]))
    assert list(dataset.splits) == ["test"]
    assert dataset.splits["test"] == [Example("u1", ("0", "1"), "2", (10, 11), 12)]


@pytest.mark.parametrize("row, reason", [
    ('u1,"[]",z,"[0, 1]",2,"[\'Red Pen\']",Pad,"[]",5,"[]",12\n', "history lists differ in length"),
    ('u1,"[]",z,"[0, 1",2,"[\'Red Pen\', \'Blue Pen\']",Pad,"[]",5,"[]",12\n', "unparsable list"),
    ('u1,"[]",z,"[0, 9]",2,"[\'Red Pen\', \'Blue Pen\']",Pad,"[]",5,"[]",12\n', "unknown item"),
    ('u1,"[]",z,"[0, 1]",2,"[\'Red Pen\', \'Black Pen\']",Pad,"[]",5,"[]",12\n', "title mismatch"),
    ('u1,"[]",z,"[0, 1]",2\n', "wrong column count"),
])
def test_rere_csv_bad_rows_name_file_and_line_or_are_counted(tmp_path, row, reason):
    folder = write_rere_folder(tmp_path / "d", [GOOD_ROW, row, GOOD_ROW])
    with pytest.raises(ValueError, match=rf"test.csv:3: {reason}"):
        load_rere_csv(folder)
    dataset = load_rere_csv(folder, skip_bad=True)
    assert len(dataset.splits["test"]) == 2 and dataset.skipped == {reason: 1}


def test_rere_csv_missing_files_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_rere_csv(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no catalog"):
        load_rere_csv(tmp_path / "empty")
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "info.txt").write_text("Pen\t0\n")
    (folder / "valid.csv").write_text("user_id,item_id\nu,0\n")
    with pytest.raises(ValueError, match=r"valid.csv:1: missing column\(s\) history_item_id"):
        load_rere_csv(folder)


def test_prepare_cli_loses_nothing_on_bad_input(tmp_path, capsys):
    good = write_rere_folder(tmp_path / "good", [GOOD_ROW])
    assert main(["prepare", "rere-csv", str(good), "-o", str(tmp_path / "out")]) == 0
    before = (tmp_path / "out" / "test.jsonl").read_text()
    bad = write_rere_folder(tmp_path / "bad", [GOOD_ROW, 'u1,"[]",z,"[0, 9]",2,"[\'Red Pen\', \'X\']",Pad,"[]",5,"[]",12\n'])
    assert main(["prepare", "rere-csv", str(bad), "-o", str(tmp_path / "out"), "--overwrite"]) == 1
    assert "test.csv:3" in capsys.readouterr().err
    assert (tmp_path / "out" / "test.jsonl").read_text() == before
    assert main(["prepare", "rere-csv", str(bad), "-o", str(tmp_path / "out"), "--overwrite", "--skip-bad"]) == 0
    assert "skipped 1 rows: unknown item" in capsys.readouterr().out


def test_shared_amazon_split(shared_path):
    folder = shared_path("amazon-industrial-rere")
    dataset = load_rere_csv(folder)
    assert len(dataset.catalog) == 3686
    assert {k: len(v) for k, v in dataset.splits.items()} == {"valid": 4532, "test": 4533}
    first = dataset.splits["test"][0]
    assert len(first.history) == 10 and len(first.history_timestamps) == 10
    assert first.history_timestamps == tuple(sorted(first.history_timestamps))


def test_semantic_ids_matched_by_title(shared_path, tmp_path):
    """The shared MiniOneRec index numbers the items differently: items are matched by
    title; every example keeps its items (the target's title is the same)."""
    sid = shared_path("amazon-industrial-sid")
    titled = load_rere_csv(shared_path("amazon-industrial-rere"))
    dataset = load_semantic_ids(sid / "index.json", titled, match="title", item_json=sid / "item.json")
    assert dataset.catalog.kind == "semantic_id" and len(dataset.catalog) == 3686
    meta = json.loads((sid / "item.json").read_text())
    for before, after in zip(titled.splits["test"][:200], dataset.splits["test"][:200]):
        assert meta[after.target]["title"] == titled.catalog.identifiers[titled.catalog.index_of(before.target)]
        assert len(after.history) == len(before.history)
    with pytest.raises(ValueError, match="has no semantic ID"):
        load_semantic_ids(sid / "index.json", small_dataset(), match="id")
