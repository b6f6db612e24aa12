"""Files that are whole or absent: written beside their destination, then renamed over it,
so an interrupted run never leaves a half-written file (and keeps any older one)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO


def check_format(info: dict, path: str | os.PathLike, expected: str, version: int) -> None:
    """A saved file's "format"/"version" header must be the one this code reads."""
    if info.get("format") != expected or info.get("version") != version:
        raise ValueError(f"{path}: format {info.get('format')!r} version {info.get('version')!r}, "
                         f"expected {expected!r} version {version}")


def write_atomically(path: str | os.PathLike, content: str | Iterable[str] | Callable[[BinaryIO], None]) -> None:
    """Write `content` (text, text chunks, or a function writing to a binary file) to `path`."""
    path = Path(path)
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                for chunk in [content] if isinstance(content, str) else content:
                    f.write(chunk.encode("utf-8"))
        os.chmod(staging, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def rere_cache() -> Path:
    """rere's cache folder: $RERE_CACHE, default ~/.cache/rere (offline sources, converted
    models, tokenised catalogs; anything in it can be deleted and is made again)."""
    return Path(os.environ.get("RERE_CACHE", Path.home() / ".cache" / "rere"))


def write_json(path: str | os.PathLike, data) -> None:
    """`data` as indented JSON in `path`, written atomically; its folder is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def write_folder_atomically(folder: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Build a folder aside (`fill(staging)`) and rename it into place, replacing any folder
    there: readers see the old folder or the new one, never half of one; a failing `fill`
    leaves the old one untouched."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fill(staging)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def check_settings(path: str | os.PathLike, settings: dict, what: str = "a run") -> None:
    """A resumable output folder holds one run: the first call writes `settings` to `path`
    (JSON); later calls must pass the same settings, or resuming would mix two runs."""
    path = Path(path)
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{path.parent} holds {what} with other settings ({', '.join(changed)} differ): "
                             "use another output folder or delete it")
    else:
        write_json(path, settings)


def complete_jsonl_lines(path: str | os.PathLike, key: str = "example", repair: bool = True) -> dict:
    """The complete lines of an append-only JSONL file, by their `key` field. A torn last
    line (from an interrupted run) is cut off, so that appending continues cleanly; not
    with `repair=False` (a file another process may be appending to)."""
    path = Path(path)
    if not path.exists():
        return {}
    done, good_bytes = {}, 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                line = json.loads(raw)
            except ValueError:
                break
            done[line[key]] = line
            good_bytes += len(raw)
    if repair and good_bytes < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return done
