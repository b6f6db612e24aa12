"""Item embeddings to quantise into semantic IDs, one row per catalog item, in catalog order.

- `collaborative_embeddings`: items that users take in near one another embed close. The
  co-occurrence counts of items within `window` positions in the training sequences
  (log-scaled), reduced by truncated SVD. The default: in the quick ML-100K measurement
  that planned this module (a throwaway script, not repeated with this code yet), SIDs
  from collaborative embeddings served a small recommender better than SIDs from SmolLM2
  title embeddings.
- `text_embeddings`: mean-pooled last hidden states of a causal LM over each item's text.
- `load_embeddings`: a matrix of your own (.npy in catalog order, or .npz with `ids` and
  `embeddings`).

Rows are L2-normalised (cosine geometry). An item with no collaborative signal (in no
training sequence beside another item) gets a seeded random direction instead of a zero
row, and is counted: zero rows are all alike, so such items would share every code (on the
shared Amazon Industrial split, 283 such items made 458 of 3,686 items share their three
codes; with random directions, see the module's test).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rere.catalog import Catalog


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.where(norms > 0, matrix / np.maximum(norms, 1e-12), 0.0)


def collaborative_embeddings(sequences: Sequence[Sequence[str]], catalog: Catalog, *, dim: int = 64,
                             window: int = 5, seed: int = 0) -> tuple[np.ndarray, dict]:
    """(embeddings [items, dim], facts) from item co-occurrence in `sequences` (item ids)."""
    from scipy.sparse import coo_matrix
    from sklearn.decomposition import TruncatedSVD

    n = len(catalog)
    rows, cols = [], []
    for sequence in sequences:
        positions = [catalog.index_of(item) for item in sequence]
        for i, a in enumerate(positions):
            for b in positions[i + 1:i + 1 + window]:
                if a != b:
                    rows += (a, b)
                    cols += (b, a)
    counts = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    counts.data = np.log1p(counts.data)  # duplicates summed by tocsr, then damped
    seen = np.asarray(counts.getnnz(axis=1) > 0)
    dim = min(dim, n - 1)
    embeddings = normalise_rows(TruncatedSVD(n_components=dim, random_state=seed).fit_transform(counts))
    embeddings[~seen] = normalise_rows(np.random.default_rng(seed).standard_normal((int((~seen).sum()), dim)))
    facts = {"embeddings": "collaborative", "dim": dim, "window": window, "sequences": len(sequences),
             "items_without_co_occurrence": int((~seen).sum())}
    return embeddings, facts


@torch.no_grad()
def text_embeddings(texts: Sequence[str], model, tokenizer, *, batch_size: int = 32,
                    max_tokens: int = 64) -> tuple[np.ndarray, dict]:
    """(embeddings [items, hidden], facts): mean of the last hidden states over each text's
    tokens (padding excluded), in fp32."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="item text embeddings", unit="batch",
                      disable=len(texts) < 20 * batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True, truncation=True,
                          max_length=max_tokens)
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
    embeddings = np.concatenate(out)
    return normalise_rows(embeddings), {"embeddings": "text", "dim": int(embeddings.shape[1]),
                                        "model": getattr(model.config, "_name_or_path", "") or model.config.model_type}


def load_embeddings(path: str | Path, catalog: Catalog) -> tuple[np.ndarray, dict]:
    """A matrix of your own: .npy with one row per catalog item in catalog order, or .npz
    with `ids` (item ids) and `embeddings` (rows in that order, any order of items)."""
    path = Path(path)
    if path.suffix == ".npy":
        matrix = np.load(path)
        if matrix.ndim != 2 or matrix.shape[0] != len(catalog):
            raise ValueError(f"{path}: shape {matrix.shape}, expected [{len(catalog)} items, dim] in catalog order")
    elif path.suffix == ".npz":
        with np.load(path) as archive:
            if "ids" not in archive or "embeddings" not in archive:
                raise ValueError(f"{path}: needs arrays 'ids' and 'embeddings', has {sorted(archive.files)}")
            ids, rows = [str(i) for i in archive["ids"]], archive["embeddings"]
        if rows.ndim != 2 or rows.shape[0] != len(ids):
            raise ValueError(f"{path}: {len(ids)} ids but embeddings of shape {rows.shape}")
        where = {item: i for i, item in enumerate(ids)}
        missing = [item for item in catalog.ids if item not in where]
        if missing:
            raise ValueError(f"{path}: no embedding for {len(missing)} catalog items, e.g. {missing[:3]}")
        matrix = rows[[where[item] for item in catalog.ids]]
    else:
        raise ValueError(f"{path}: embeddings must be a .npy or .npz file")
    if not np.isfinite(matrix).all():
        bad = int(np.argwhere(~np.isfinite(matrix))[0][0])
        raise ValueError(f"{path}: the embedding of item {catalog.ids[bad]!r} (row {bad}) holds NaN or inf")
    return normalise_rows(matrix.astype(np.float64)), {"embeddings": str(path), "dim": int(matrix.shape[1])}
