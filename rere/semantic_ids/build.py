"""A prepared dataset whose catalog spells every item by a semantic ID built from item data.

`build_semantic_ids(dataset, embeddings=...)` is what `rere sid build` runs: embeddings of
the catalog (collaborative from the training sequences, text from a causal LM, or a matrix
of your own), then balanced RQ-KMeans (`rq_kmeans`). The splits are kept as they are; the
report (code use per level, collisions before the disambiguating code, how the embeddings
were made) goes into the dataset's options under "semantic_ids".
"""
from __future__ import annotations

from dataclasses import replace

from rere.data.training_sequences import training_data
from rere.catalog import Catalog
from rere.data.dataset import Dataset
from rere.semantic_ids.item_embeddings import collaborative_embeddings, load_embeddings, text_embeddings
from rere.semantic_ids.rq_kmeans import rq_kmeans

def build_semantic_ids(dataset: Dataset, *, embeddings: str = "collaborative", levels: int = 3,
                       codebook_size: int = 256, balance: float = 1.0, dim: int = 64, window: int = 5,
                       evaluated: str = "test", text_model=None, seed: int = 0) -> Dataset:
    """`dataset` with its catalog replaced by semantic IDs (module docstring).

    embeddings: "collaborative", "text" (needs `text_model` = (model, tokenizer) and a title
    catalog), or the path of a .npy / .npz matrix (`load_embeddings`). `evaluated` is the
    split whose targets the collaborative embeddings must not see (`training_data`).
    """
    catalog = dataset.catalog
    if embeddings == "collaborative":
        sequences = training_data(dataset, evaluated).sequences
        matrix, facts = collaborative_embeddings(sequences, catalog, dim=dim, window=window, seed=seed)
    elif embeddings == "text":
        if catalog.kind != "title":
            raise ValueError("text embeddings need a catalog of titles; this one holds semantic IDs")
        if text_model is None:
            raise ValueError("text embeddings need a model: text_model=(model, tokenizer)")
        matrix, facts = text_embeddings(catalog.identifiers, *text_model)
    else:
        matrix, facts = load_embeddings(embeddings, catalog)
    codes = rq_kmeans(matrix, levels=levels, codebook_size=codebook_size, balance=balance, seed=seed)
    report = {**codes.report, **facts}
    sid_catalog = Catalog.from_lists(catalog.ids, codes.tokens())
    return replace(dataset, catalog=sid_catalog, options={**dataset.options, "semantic_ids": report})
