"""The RecHead: vectors, scores, full-catalog retrieval (also at 1M items), the sampled
softmax it trains with, and its files."""
from __future__ import annotations

import json

import pytest
import torch

from rere.catalog import Catalog
from rere.metrics import identifier_groups
from rere.rporec.rec_head import RecHead, RecHeadConfig
from rere.rporec.stage1 import sampled_softmax_loss


def make_head(num_items=20, hidden=8, dim=6, seed=0, **options):
    torch.manual_seed(seed)
    encodings = torch.randn(num_items, hidden)
    return RecHead(RecHeadConfig(hidden_size=hidden, num_items=num_items, dim=dim, **options), encodings)


def test_vectors_are_unit_and_recommend_is_the_plain_argsort_of_the_scores():
    head = make_head()
    with torch.no_grad():
        head.residual.weight.normal_()  # zero at the start: give it a part to play
    hidden = torch.randn(3, 8)
    users, items = head.user_vectors(hidden), head.item_vectors()
    torch.testing.assert_close(users.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(items.norm(dim=1), torch.ones(20))
    torch.testing.assert_close(head.item_vectors(torch.tensor([4, 2])), items[[4, 2]])
    logits = head.logits(users, items)
    torch.testing.assert_close(logits, users @ items.T / 0.07)
    scores, index = head.recommend(hidden, 5, exclude=[[], [int(logits[1].argmax())], []])
    assert torch.equal(index[0], logits[0].argsort(descending=True)[:5])
    assert int(logits[1].argmax()) not in index[1].tolist()
    torch.testing.assert_close(scores[2], logits[2].sort(descending=True).values[:5])
    # Ranks count the whole catalog: row 1's third item trails its excluded best item too.
    assert head.ranks(hidden, index[:, 2]).tolist() == [2, 3, 2]


def test_bad_configs_and_shapes_are_refused():
    with pytest.raises(ValueError, match="pooling"):
        RecHeadConfig(hidden_size=4, num_items=3, pooling="max")
    with pytest.raises(ValueError, match="temperature"):
        RecHeadConfig(hidden_size=4, num_items=3, temperature=5.0)
    with pytest.raises(ValueError, match=r"item encodings \(3, 5\), expected .*\[3, 4\]"):
        RecHead(RecHeadConfig(hidden_size=4, num_items=3), torch.zeros(3, 5))


def test_sampled_softmax_masks_accidental_hits_and_learns():
    catalog = Catalog.from_lists([f"i{i}" for i in range(20)], [f"title {i % 17}" for i in range(20)])  # 3 dups
    groups = torch.as_tensor(identifier_groups(catalog))
    head = make_head(learn_temperature=True)
    hidden = torch.randn(16, 8)
    targets = torch.arange(16) % 20
    negatives = torch.tensor([0, 17, 3])  # item 17 shares item 0's title; both are targets' duplicates
    # By hand: the logits with every same-title candidate but the target's own column masked.
    users = head.user_vectors(hidden)
    candidates = torch.cat([targets, negatives])
    logits = head.logits(users, head.item_vectors(candidates))
    same = groups[candidates][None] == groups[targets][:, None]
    same[torch.arange(16), torch.arange(16)] = False
    want = torch.nn.functional.cross_entropy(logits.masked_fill(same, -torch.inf), torch.arange(16))
    loss = sampled_softmax_loss(head, users, targets, negatives, groups)
    torch.testing.assert_close(loss, want)
    assert torch.isfinite(loss)

    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    first = loss.item()
    for _ in range(60):
        loss = sampled_softmax_loss(head, head.user_vectors(hidden), targets, negatives, groups)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 4
    assert float(head.temperature.detach()) != pytest.approx(0.07)  # learnt
    # Trained on these users, the head retrieves each one's target first among all 20 items
    # (or an item sharing its title).
    top = head.recommend(hidden, 1)[1][:, 0]
    assert (groups[top] == groups[targets]).float().mean() >= 0.9


def test_save_and_load_round_trip_and_provenance_check(tmp_path):
    head = make_head(pooling="mean", item_residual=False)
    head.provenance = {"catalog": "abc", "encoder": "def", "encoder_spec": "smollm2"}
    head.save(tmp_path / "head")
    loaded = RecHead.load(tmp_path / "head", provenance={"catalog": "abc"})
    assert loaded.config == head.config and loaded.provenance == head.provenance
    hidden = torch.randn(2, 8)
    torch.testing.assert_close(loaded.recommend(hidden, 4)[0], head.recommend(hidden, 4)[0])
    with pytest.raises(ValueError, match="trained for catalog abc, this one is xyz"):
        RecHead.load(tmp_path / "head", provenance={"catalog": "xyz"})
    info = json.loads((tmp_path / "head" / "head.json").read_text())
    (tmp_path / "head" / "head.json").write_text(json.dumps({**info, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        RecHead.load(tmp_path / "head")
    with pytest.raises(FileNotFoundError, match="no RecHead here"):
        RecHead.load(tmp_path)


@pytest.mark.slow
def test_retrieval_over_one_million_items():
    head = make_head(num_items=1_000_000, hidden=16, dim=16, seed=2)
    with torch.no_grad():
        head.residual.weight.normal_(std=0.1)
    hidden = torch.randn(4, 16)
    items = head.item_vectors()
    assert items.shape == (1_000_000, 16)
    scores, index = head.recommend(hidden, 20, items=items)
    full = head.logits(head.user_vectors(hidden), items)
    assert torch.equal(index, full.argsort(dim=1, descending=True, stable=True)[:, :20])
    assert head.ranks(hidden, index[:, 13], items=items).tolist() == [13] * 4
