"""Ranking metrics: hand-computed HR/NDCG, duplicates, invalid slots, coverage, diversity,
popularity and history splits, errors, and a property test against a plain reference."""
from __future__ import annotations

import gc
import math
import re
import string

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rere.catalog import Catalog
from rere.metrics import KS, metrics_table, ranking_metrics, target_ranks

TITLES = ["Red Pen", "Blue Pen", "Red Pen", "Green Ink Bottle", "Pencil Case", "Eraser"]


def titles(*names: str) -> Catalog:
    return Catalog.from_lists([str(i) for i in range(len(names))], list(names))


@pytest.fixture
def catalog() -> Catalog:
    return titles(*TITLES)


def sids(*codes: tuple[str, ...]) -> Catalog:
    return Catalog.from_lists([str(i) for i in range(len(codes))], [list(c) for c in codes])


# -- ranks, HR and NDCG ------------------------------------------------------------------


def test_hr_and_ndcg_by_hand(catalog):
    ranked = [[3, 1, 4], [1, 5, 4, 0, 3], [5, 4, 1], [0, 1, 4, 5, 3, 2]]
    targets = [3, 4, 0, 2]  # last: "Red Pen" is item 0 at rank 0
    ranks = target_ranks(ranked, targets, catalog)
    assert ranks.dtype == np.int64 and ranks.tolist() == [0, 2, -1, 0]
    m = ranking_metrics(ranked, targets, catalog, ks=(1, 2, 3, 5))
    assert m["examples"] == 4
    assert m["HR@1"] == m["NDCG@1"] == 0.5
    assert m["HR@2"] == m["NDCG@2"] == 0.5
    assert m["HR@3"] == m["HR@5"] == 0.75
    # rank 2 gains 1/log2(4) = 0.5
    assert m["NDCG@3"] == pytest.approx((1 + 0.5 + 1) / 4)
    assert m["NDCG@5"] == pytest.approx((1 + 0.5 + 1) / 4)


def test_ndcg_gain_per_rank():
    catalog = titles(*[f"item {i}" for i in range(60)])
    for rank in (0, 1, 2, 4, 9, 49):
        ranked = [list(range(1, 51))]
        ranked[0][rank] = 0
        m = ranking_metrics(ranked, [0], catalog)
        for k in KS:
            expected = 1 / math.log2(rank + 2) if rank < k else 0.0
            assert m[f"NDCG@{k}"] == pytest.approx(expected)
            assert m[f"HR@{k}"] == (1.0 if rank < k else 0.0)
    assert 1 / math.log2(2 + 2) == 0.5


def test_duplicated_titles_all_hit_first_one_counts(catalog):
    # Items 0 and 2 share "Red Pen": either is a hit for the other, at its first position.
    ranked = [[1, 2, 0], [2, 0], [1, 0, 2], [3, 4]]
    targets = [0, 0, 2, 2]
    assert target_ranks(ranked, targets, catalog).tolist() == [1, 0, 1, -1]
    m = ranking_metrics(ranked, targets, catalog, ks=(1, 2))
    assert m["HR@1"] == 0.25 and m["HR@2"] == 0.75
    assert m["NDCG@2"] == pytest.approx((1 / math.log2(3) * 2 + 1) / 4)


def test_invalid_entries_never_hit_and_are_counted(catalog):
    ranked = [[-1, -1, 3], [-1, 1], [0], [-1, -1, -1]]
    targets = [3, 1, 5, 0]
    assert target_ranks(ranked, targets, catalog).tolist() == [2, 1, -1, -1]
    m = ranking_metrics(ranked, targets, catalog, ks=(1, 3))
    assert m["invalid"] == 6
    assert m["invalid_rate"] == pytest.approx(6 / 9)  # 9 slots in all, padding not counted
    assert m["examples_with_invalid"] == 3
    assert m["HR@1"] == 0.0 and m["HR@3"] == 0.5


def test_invalid_in_a_2d_array_counts_every_slot(catalog):
    ranked = np.array([[0, -1, -1], [1, 2, 3]])
    m = ranking_metrics(ranked, [0, 3], catalog, ks=(1, 3))
    assert (m["invalid"], m["examples_with_invalid"]) == (2, 1)
    assert m["invalid_rate"] == pytest.approx(2 / 6)
    assert m["HR@1"] == 0.5 and m["NDCG@3"] == pytest.approx((1 + 0.5) / 2)


def test_ragged_lists_and_array_inputs_agree(catalog):
    ragged = [[4], [2, 5, 3, 1], [], [5, 3]]
    targets = [4, 1, 0, 3]
    assert target_ranks(ragged, targets, catalog).tolist() == [0, 3, -1, 1]
    padded = np.array([[4, -1, -1, -1], [2, 5, 3, 1], [-1] * 4, [5, 3, -1, -1]])
    arrays = [np.array(r, dtype=np.int32) for r in ragged]
    tensor = torch.tensor(padded)
    for same in (padded, arrays, tensor, [tuple(r) for r in ragged]):
        assert target_ranks(same, targets, catalog).tolist() == [0, 3, -1, 1]
    a = ranking_metrics(ragged, targets, catalog)
    b = ranking_metrics(padded, targets, catalog)
    assert {k: v for k, v in a.items() if "invalid" not in k} == {
        k: v for k, v in b.items() if "invalid" not in k
    }
    assert a["invalid"] == 0 and b["invalid"] == 9
    assert target_ranks([[], []], [0, 1], catalog).tolist() == [-1, -1]
    as_objects = np.empty(len(ragged), dtype=object)
    as_objects[:] = [np.array(r, dtype=np.int64) for r in ragged]
    assert target_ranks(as_objects, torch.tensor(targets), catalog).tolist() == [0, 3, -1, 1]
    with pytest.raises(ValueError, match="2-D"):
        target_ranks(np.array([0, 1]), [0, 1], catalog)


def test_coverage(catalog):
    ranked = [[0, 1, 3], [0, 4, -1], [2]]
    m = ranking_metrics(ranked, [0, 0, 0], catalog, ks=(1, 2, 3, 10))
    assert m["coverage@1"] == pytest.approx(2 / 6)  # items 0, 2
    assert m["coverage@2"] == pytest.approx(4 / 6)  # + 1, 4
    assert m["coverage@3"] == pytest.approx(5 / 6)  # + 3
    assert m["coverage@10"] == pytest.approx(5 / 6)
    assert "coverage@5" not in m


# -- diversity -----------------------------------------------------------------------------


def test_title_diversity_by_hand(catalog):
    # d(Red Pen, Red Pen) = 0; d(Red Pen, Blue Pen) = 1 - 1/3; disjoint titles: 1.
    m = ranking_metrics([[0, 2]], [0], catalog)
    assert m["diversity@10"] == 0.0
    m = ranking_metrics([[3, 5]], [0], catalog)
    assert m["diversity@10"] == 1.0
    m = ranking_metrics([[0, 1]], [0], catalog)
    assert m["diversity@10"] == pytest.approx(2 / 3)
    # A list's pairs are averaged, then the lists; a list with < 2 valid items is skipped.
    m = ranking_metrics([[0, 1, 3], [0, 2, -1], [5, -1], [-1, -1]], [0] * 4, catalog)
    assert m["diversity@10"] == pytest.approx((8 / 9 + 0) / 2)
    # Only the top diversity_k slots count.
    m = ranking_metrics([[0, 2, 3, 5]], [0], catalog, diversity_k=2)
    assert m["diversity@2"] == 0.0 and "diversity@10" not in m
    m = ranking_metrics([[0, 2, 3, 5]], [0], catalog, diversity_k=3)
    assert m["diversity@3"] == pytest.approx(2 / 3)


def test_title_words_ignore_case_and_punctuation():
    catalog = titles("Red, pen!", "red PEN", "pen - red pen", "...", "!!!", "Red-Pen (2)")
    assert ranking_metrics([[0, 1, 2]], [0], catalog)["diversity@10"] == 0.0
    # Two punctuation-only titles have no words: distance 0 between them, 1 to the rest.
    assert ranking_metrics([[3, 4]], [0], catalog)["diversity@10"] == 0.0
    assert ranking_metrics([[3, 0]], [0], catalog)["diversity@10"] == 1.0
    # {red, pen, 2} vs {red, pen}: 1 - 2/3
    assert ranking_metrics([[5, 0]], [0], catalog)["diversity@10"] == pytest.approx(1 / 3)


def test_title_holding_the_internal_separator():
    catalog = titles("red\x00pen", "red pen", "blue")
    assert ranking_metrics([[0, 1]], [0], catalog)["diversity@10"] == 0.0
    assert ranking_metrics([[0, 2]], [0], catalog)["diversity@10"] == 1.0


def test_semantic_id_diversity_by_hand():
    catalog = sids(
        ("<a_1>", "<b_2>", "<c_3>"),
        ("<a_1>", "<b_2>", "<c_4>"),
        ("<a_1>", "<b_5>", "<c_3>"),
        ("<a_9>", "<b_8>", "<c_7>"),
        ("<a_1>", "<b_2>", "<c_3>"),  # same code as item 0
    )
    assert catalog.kind == "semantic_id"
    m = ranking_metrics([[0, 1, 2]], [0], catalog)
    assert m["diversity@10"] == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    assert ranking_metrics([[0, 3]], [0], catalog)["diversity@10"] == 1.0
    assert ranking_metrics([[0, 4]], [0], catalog)["diversity@10"] == 0.0
    assert target_ranks([[4, 0]], [0], catalog).tolist() == [0]  # shared code: a hit
    # Codes are compared position by position.
    shifted = sids(("<x>", "<y>"), ("<y>", "<x>"), ("<x>", "<y>", "<z>"))
    assert ranking_metrics([[0, 1]], [0], shifted)["diversity@10"] == 1.0
    # Different lengths: the missing position differs; over the longer length.
    assert ranking_metrics([[0, 2]], [0], shifted)["diversity@10"] == pytest.approx(1 / 3)


def test_diversity_without_pairs_is_nan(catalog):
    assert math.isnan(ranking_metrics([[0], [-1, 1]], [0, 0], catalog)["diversity@10"])
    assert math.isnan(ranking_metrics([[0, 1]], [0], catalog, diversity_k=1)["diversity@1"])


# -- popularity and history ---------------------------------------------------------------

COUNTS = np.array([10, 0, 5, 3, 1, 1])  # sum 20, 6 items


def test_novelty_and_popularity(catalog):
    m = ranking_metrics([[0, 1], [2, -1]], [0, 0], catalog, train_counts=COUNTS)
    p = np.array([11, 1, 6]) / 26
    assert m["novelty@10"] == pytest.approx(float(np.mean(-np.log2(p))))
    assert m["popularity@10"] == pytest.approx(5.0)
    # Only the top diversity_k slots are the recommended ones.
    m = ranking_metrics([[0, 1], [2, -1]], [0, 0], catalog, train_counts=COUNTS, diversity_k=1)
    assert m["popularity@1"] == pytest.approx(7.5)
    assert m["novelty@1"] == pytest.approx(-(math.log2(11 / 26) + math.log2(6 / 26)) / 2)
    m = ranking_metrics([[-1]], [0], catalog, train_counts=COUNTS)
    assert math.isnan(m["novelty@10"]) and math.isnan(m["popularity@10"])
    assert "novelty@10" not in ranking_metrics([[0]], [0], catalog)
    assert "by_popularity" not in ranking_metrics([[0]], [0], catalog)


def test_head_tail_split(catalog):
    # head_share 0.5 of 6 items: the 3 most popular, items 0 (10), 2 (5), 3 (3).
    ranked = [[0, 1], [1, 3], [4], [5, 2]]
    targets = [0, 3, 4, 1]  # ranks 0, 1, 0, -1
    m = ranking_metrics(ranked, targets, catalog, ks=(1, 2), train_counts=COUNTS, head_share=0.5)
    head, tail = m["by_popularity"]["head"], m["by_popularity"]["tail"]
    assert head == {"examples": 2, "HR@1": 0.5, "NDCG@1": 0.5, "HR@2": 1.0,
                    "NDCG@2": pytest.approx((1 + 1 / math.log2(3)) / 2)}
    assert tail == {"examples": 2, "HR@1": 0.5, "NDCG@1": 0.5, "HR@2": 0.5, "NDCG@2": 0.5}


def test_head_ties_broken_by_position(catalog):
    counts = np.array([0, 2, 1, 1, 1, 0])
    # head_share 0.5: items 1 (2 interactions), then 2 and 3 of the tied 2, 3, 4.
    targets = [0, 1, 2, 3, 4, 5]
    m = ranking_metrics([[t] for t in targets], targets, catalog, ks=(1,), train_counts=counts,
                        head_share=0.5)
    assert m["by_popularity"]["head"]["examples"] == 3
    m = ranking_metrics([[1], [3], [4]], [1, 3, 4], catalog, ks=(1,), train_counts=counts,
                        head_share=0.5)
    assert m["by_popularity"]["head"]["examples"] == 2
    assert m["by_popularity"]["tail"]["examples"] == 1
    # head_share 0: everything is tail; the empty head reports nan.
    m = ranking_metrics([[1]], [1], catalog, ks=(1,), train_counts=counts, head_share=0.0)
    assert m["by_popularity"]["head"]["examples"] == 0
    assert math.isnan(m["by_popularity"]["head"]["HR@1"])
    assert m["by_popularity"]["tail"] == {"examples": 1, "HR@1": 1.0, "NDCG@1": 1.0}


def test_cold_warm_split(catalog):
    ranked = [[0], [1, 0], [3], [5]]
    targets = [0, 0, 4, 5]  # ranks 0, 1, -1, 0
    m = ranking_metrics(ranked, targets, catalog, ks=(1, 2), history_lengths=[1, 3, 4, 10])
    cold, warm = m["by_history"]["cold (<= 3)"], m["by_history"]["warm (> 3)"]
    assert cold == {"examples": 2, "HR@1": 0.5, "NDCG@1": 0.5, "HR@2": 1.0,
                    "NDCG@2": pytest.approx((1 + 1 / math.log2(3)) / 2)}
    assert warm == {"examples": 2, "HR@1": 0.5, "NDCG@1": 0.5, "HR@2": 0.5, "NDCG@2": 0.5}
    m = ranking_metrics(ranked, targets, catalog, ks=(1,), history_lengths=[1, 3, 4, 10],
                        cold_history=0)
    assert list(m["by_history"]) == ["cold (<= 0)", "warm (> 0)"]
    assert m["by_history"]["cold (<= 0)"]["examples"] == 0
    assert "by_history" not in ranking_metrics(ranked, targets, catalog)


# -- errors -------------------------------------------------------------------------------


def test_errors(catalog):
    with pytest.raises(ValueError, match="empty"):
        ranking_metrics([], [], catalog)
    with pytest.raises(ValueError, match="empty"):
        target_ranks(np.zeros((0, 5), dtype=int), [], catalog)
    with pytest.raises(ValueError, match="example 1: target position 6"):
        ranking_metrics([[0], [1]], [0, 6], catalog)
    with pytest.raises(ValueError, match="example 2: target position -1"):
        target_ranks([[0], [1], [2]], [0, 1, -1], catalog)
    with pytest.raises(ValueError, match="example 1: ranked entry 2 is 6"):
        target_ranks([[0], [1, 2, 6]], [0, 1], catalog)
    with pytest.raises(ValueError, match="example 0: ranked entry 0 is -2"):
        target_ranks(np.array([[-2]]), [0], catalog)
    with pytest.raises(ValueError, match="2 ranked lists but 3 targets"):
        target_ranks([[0], [1]], [0, 1, 2], catalog)
    with pytest.raises(ValueError, match="integer"):
        target_ranks([[0.0, 1.0]], [0], catalog)
    with pytest.raises(ValueError, match="integer"):
        target_ranks(np.array([[0.5]]), [0], catalog)
    with pytest.raises(ValueError, match="integer"):
        target_ranks([[0]], [0.0], catalog)
    with pytest.raises(ValueError, match="train_counts"):
        ranking_metrics([[0]], [0], catalog, train_counts=[1, 2])
    with pytest.raises(ValueError, match="train_counts"):
        ranking_metrics([[0]], [0], catalog, train_counts=[1, 2, 3, -4, 5, 6])
    with pytest.raises(ValueError, match="history_lengths"):
        ranking_metrics([[0]], [0], catalog, history_lengths=[1, 2])
    with pytest.raises(ValueError, match="head_share"):
        ranking_metrics([[0]], [0], catalog, train_counts=COUNTS, head_share=1.5)
    with pytest.raises(ValueError, match="k must be a positive"):
        ranking_metrics([[0]], [0], catalog, ks=(0, 1))
    with pytest.raises(ValueError, match="diversity_k"):
        ranking_metrics([[0]], [0], catalog, diversity_k=0)


# -- table --------------------------------------------------------------------------------


def test_metrics_table(catalog):
    a = ranking_metrics([[0, 1]], [1], catalog, ks=(1, 2))
    b = {"HR@1": 0.25, "NDCG@1": 0.25, "HR@2": 1 / 3, "NDCG@2": 0.3, "invalid_rate": 0.5}
    table = metrics_table({"ReRe": a, "base|line": b}, ks=(1, 2),
                          extra=("coverage@2", "invalid_rate", "absent"))
    assert table.splitlines() == [
        "| method | HR@1 | NDCG@1 | HR@2 | NDCG@2 | coverage@2 | invalid_rate |",
        "|---|---:|---:|---:|---:|---:|---:|",
        "| ReRe | 0.0000 | 0.0000 | 1.0000 | 0.6309 | 0.3333 | 0.0000 |",
        "| base\\|line | 0.2500 | 0.2500 | 0.3333 | 0.3000 | - | 0.5000 |",
    ]
    header = metrics_table({"x": ranking_metrics([[0]], [0], catalog)}).splitlines()[0]
    assert header == "| method | " + " | ".join(f"HR@{k} | NDCG@{k}" for k in KS) + " |"
    with pytest.raises(ValueError):
        metrics_table({})


# -- caches -------------------------------------------------------------------------------


def test_each_catalog_gets_its_own_groups_and_words():
    for _ in range(3):
        first = titles("a b", "a b", "c")
        assert target_ranks([[1]], [0], first).tolist() == [0]
        assert ranking_metrics([[0, 2]], [0], first)["diversity@10"] == 1.0
        del first
        gc.collect()
        second = titles("a b", "c d", "a b")
        assert target_ranks([[1, 2]], [0], second).tolist() == [1]
        assert ranking_metrics([[0, 2]], [0], second)["diversity@10"] == 0.0
        del second
        gc.collect()


# -- property test against a plain reference ------------------------------------------------

WORDS = ["red", "Pen", "blue", "ink", "pen,", "(x)", "-", "2"]


def reference_words(title: str) -> set[str]:
    return set(re.sub("[" + re.escape(string.punctuation) + "]", " ", title.lower()).split())


def reference(ranked, targets, names, ks, diversity_k):
    """Straightforward per-example loops."""
    ranks = []
    for row, target in zip(ranked, targets):
        rank = next((j for j, r in enumerate(row) if r != -1 and names[r] == names[target]), -1)
        ranks.append(rank)
    out = {}
    for k in ks:
        out[f"HR@{k}"] = sum(1 for r in ranks if 0 <= r < k) / len(ranks)
        out[f"NDCG@{k}"] = sum(1 / math.log2(r + 2) for r in ranks if 0 <= r < k) / len(ranks)
        seen = {r for row in ranked for r in row[:k] if r != -1}
        out[f"coverage@{k}"] = len(seen) / len(names)
    slots = sum(map(len, ranked))
    out["invalid"] = sum(row.count(-1) for row in ranked)
    out["invalid_rate"] = out["invalid"] / slots if slots else 0.0
    per_list = []
    for row in ranked:
        items = [r for r in row[:diversity_k] if r != -1]
        distances = []
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                a, b = reference_words(names[items[i]]), reference_words(names[items[j]])
                union = a | b
                distances.append(1 - len(a & b) / len(union) if union else 0.0)
        if distances:
            per_list.append(sum(distances) / len(distances))
    out[f"diversity@{diversity_k}"] = sum(per_list) / len(per_list) if per_list else math.nan
    return ranks, out


@st.composite
def cases(draw):
    names = draw(st.lists(
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
        min_size=1, max_size=12,
    ))
    n_items = len(names)
    position = st.integers(-1, n_items - 1)
    ranked = draw(st.lists(st.lists(position, max_size=8), min_size=1, max_size=10))
    targets = draw(st.lists(st.integers(0, n_items - 1), min_size=len(ranked),
                            max_size=len(ranked)))
    ks = tuple(sorted(draw(st.sets(st.integers(1, 9), min_size=1, max_size=4))))
    return names, ranked, targets, ks, draw(st.integers(1, 6))


@settings(max_examples=150, deadline=None)
@given(cases())
def test_matches_reference(case):
    names, ranked, targets, ks, diversity_k = case
    catalog = titles(*names)
    expected_ranks, expected = reference(ranked, targets, names, ks, diversity_k)
    assert target_ranks(ranked, targets, catalog).tolist() == expected_ranks
    m = ranking_metrics(ranked, targets, catalog, ks=ks, diversity_k=diversity_k)
    assert m["examples"] == len(ranked)
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(m[key]), key
        else:
            assert m[key] == pytest.approx(value, abs=1e-12), key
    # The same lists as a padded 2-D array give the same ranks.
    width = max(map(len, ranked))
    padded = np.array([row + [-1] * (width - len(row)) for row in ranked], dtype=np.int64)
    if width:
        assert target_ranks(padded, targets, catalog).tolist() == expected_ranks
