"""A catalog tokenised and indexed once, then memory-mapped by every trainer, evaluation and rank.

Tokenising 1M titles takes ~35 s, and SFT, GRPO and every evaluation did it again, as would
every torchrun rank (benchmarks/RESULTS.md, "A run at 10k, 100k and 1M items").
`cached_catalog` keeps the tokenised catalog (tokens.npy, offsets.npy) and its index
(index.rtrie) in a folder named by a digest of all that defines them: the catalog's ids
and texts, the tokenizer (its whole serialised form), the completion template and context,
the vocabulary size. The first caller builds them and publishes the folder atomically;
later calls, other processes and the other ranks memory-map the files (the index loads in
~24 ms at 1M items). Under torchrun rank 0 builds while the others wait at a barrier.

The folder is $RERE_CACHE/catalogs/DIGEST (`rere.files.rere_cache`); delete it freely.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rere.catalog import Catalog, TokenizedCatalog
from rere.distributed import Distributed
from rere.files import rere_cache
from rere.index.catalog_index import CatalogIndex

FORMAT = 1  # of the folder; a new layout gets a new digest


@dataclass
class CachedCatalog:
    completions: TokenizedCatalog  # memory-mapped
    index: CatalogIndex  # memory-mapped, on the CPU


def cached_catalog(catalog: Catalog, tokenizer, *, template: str, context: str, vocab_size: int,
                   dist: Distributed | None = None, cache_dir: str | Path | None = None) -> CachedCatalog:
    """The catalog's completions and index as `Catalog.tokenize(tokenizer, template, context)`
    and `CatalogIndex.from_flat` make them, from the cache (see the module doc)."""
    dist = dist or Distributed()
    folder = Path(cache_dir or catalogs_folder()) / catalog_digest(catalog, tokenizer, template, context, vocab_size)
    error = None
    if dist.is_main and not (folder / "info.json").exists():
        try:
            _build(folder, catalog, tokenizer, template, context, vocab_size)
        except Exception as caught:  # raised below, once the other ranks know
            error = caught
    dist.agree(error, "tokenising the catalog")  # every rank waits for rank 0's build, and hears if it failed
    info = json.loads((folder / "info.json").read_text())
    if info["eos_token_id"] != tokenizer.eos_token_id:  # the digest covers it; a hand-edited folder would not
        raise ValueError(f"{folder} was tokenised with EOS {info['eos_token_id']}, this tokenizer's is "
                         f"{tokenizer.eos_token_id}: delete the folder")
    completions = TokenizedCatalog(np.load(folder / "tokens.npy", mmap_mode="r"),
                                   np.load(folder / "offsets.npy", mmap_mode="r"), info["eos_token_id"],
                                   info["vocab_size"])
    return CachedCatalog(completions, CatalogIndex.load(folder / "index.rtrie"))


def catalogs_folder() -> Path:
    return rere_cache() / "catalogs"


def _build(folder: Path, catalog: Catalog, tokenizer, template: str, context: str, vocab_size: int) -> None:
    completions = catalog.tokenize(tokenizer, template=template, context=context)
    index = CatalogIndex.from_flat(completions.tokens, completions.offsets, vocab_size=vocab_size,
                                   metadata={"catalog_items": len(catalog), "template": template, "context": context,
                                             "eos_token_id": completions.eos_token_id})

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        np.save(staging / "tokens.npy", completions.tokens)
        np.save(staging / "offsets.npy", completions.offsets)
        index.save(staging / "index.rtrie")
        (staging / "info.json").write_text(json.dumps({  # written last: a folder with it is whole
            "format": FORMAT, "items": len(catalog), "eos_token_id": completions.eos_token_id,
            "vocab_size": completions.vocab_size, "template": template, "context": context}) + "\n")
        try:
            staging.rename(folder)  # published whole, never replacing a folder another process may be reading
        except OSError:
            if not (folder / "info.json").exists():  # not another process's copy: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # ours, when another process published first


def catalog_digest(catalog: Catalog, tokenizer, template: str, context: str, vocab_size: int) -> str:
    # EOS and the added tokens come from the HF wrapper, not the serialised backend.
    digest = hashlib.sha256(f"rere-catalog/{FORMAT}\x00{template}\x00{context}\x00{vocab_size}\x00"
                            f"{tokenizer.eos_token_id}\x00{len(tokenizer)}\x00".encode())
    digest.update(catalog.fingerprint().encode())
    digest.update(_tokenizer_text(tokenizer).encode())
    return digest.hexdigest()[:24]


def _tokenizer_text(tokenizer) -> str:
    """All that makes the tokenizer's ids: a fast tokenizer's serialised form (vocabulary,
    merges, normalisation, added tokens), else its vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.to_str()
    return repr((type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), tokenizer.eos_token_id))
