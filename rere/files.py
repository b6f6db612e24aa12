"""Files that are whole or absent: written beside their destination, then renamed over it,
so an interrupted run never leaves a half-written file (and keeps any older one)."""
from __future__ import annotations

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
