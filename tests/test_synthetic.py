"""The synthetic catalogs of the scale benchmarks."""
from __future__ import annotations

import pytest

from rere.synthetic import titled_dataset


def test_titled_users_follow_one_brand_through_its_model_numbers():
    dataset = titled_dataset(1_000, n_users=200, history=4)
    catalog = dataset.catalog
    assert len(catalog) == 1_000 and len(set(catalog.identifiers)) == 1_000  # titles are unique
    assert {name: len(rows) for name, rows in dataset.splits.items()} == {"train": 200, "valid": 20, "test": 20}
    for example in dataset.splits["train"]:
        titles = [catalog.identifiers[catalog.index_of(i)].split() for i in (*example.history, example.target)]
        assert len({t[0] for t in titles}) == 1  # one brand
        assert [int(t[-1]) for t in titles] == list(range(int(titles[0][-1]), int(titles[0][-1]) + 5))
    assert titled_dataset(1_000, n_users=200).splits == titled_dataset(1_000, n_users=200).splits  # seeded
    with pytest.raises(ValueError, match="n_items must be at least items_per_brand=50"):
        titled_dataset(10)
