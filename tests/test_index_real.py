"""The index on real catalogs through a real tokenizer (Qwen2, built offline)."""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_path
from rere.catalog import Catalog
from rere.index import CatalogIndex
from rere.tokenizers import qwen2_tokenizer
from test_index import check_against_reference, rows
from trie_reference import ReferenceTrie


def walk(index: CatalogIndex, seqs: list[list[int]]) -> torch.Tensor:
    """The state of every sequence after all its tokens, advancing all of them in lockstep."""
    states = index.root_states(len(seqs))
    for depth in range(max(map(len, seqs))):
        active = torch.tensor([depth < len(s) for s in seqs])
        step = torch.tensor([s[depth] if depth < len(s) else 0 for s in seqs])
        states = torch.where(active, index.advance(states, step), states)
    return states


def check_catalog(catalog: Catalog, tokenizer) -> CatalogIndex:
    tokenized = catalog.tokenize(tokenizer)
    seqs = [tokenized.sequence(i).tolist() for i in range(len(catalog))]
    index = CatalogIndex.from_catalog(catalog, tokenizer)
    assert index.num_items == len(catalog) and index.vocab_size == len(tokenizer)
    check_against_reference(index, ReferenceTrie(seqs), vocab_size=len(tokenizer))
    # Every item ends where its sequence does, together with exactly its duplicates.
    same = {}
    for i, identifier in enumerate(catalog.identifiers):
        same.setdefault(identifier, []).append(i)
    offsets, items = index.items_at(walk(index, seqs))
    assert [sorted(r) for r in rows(offsets, items)] == [same[x] for x in catalog.identifiers]
    return index


def test_amazon_titles(qwen2):
    catalog = Catalog.from_tsv(shared_path("amazon-industrial-rere/info.txt"))
    index = check_catalog(catalog, qwen2)
    stats = index.stats()
    assert stats["items"] == 3686
    # '"' merges with the title's first characters into 35 distinct first tokens; the
    # second token branches most (568); the longest title is 84 tokens with eos.
    assert stats["max_fanout_per_depth"][:2] == [35, 568]
    assert stats["max_depth"] == 84
    assert stats["nodes"] < 1.5 * stats["items"]  # ~30 tokens an item, nearly all on compressed edges
    assert index.metadata["catalog_kind"] == "title"


def test_amazon_semantic_ids():
    catalog = Catalog.from_json(shared_path("amazon-industrial-sid/index.json"))
    tokenizer = qwen2_tokenizer()  # private copy: the SID tokens are added to it
    catalog.add_tokens_to(tokenizer)
    index = check_catalog(catalog, tokenizer)
    # <a_x><b_y><c_z>\n<eos>: 48 first codes in use, then the newline and eos.
    assert index.stats()["max_fanout_per_depth"] == [48, 95, 47, 1, 1, 0]
    assert sum(len(ids) for ids in catalog.duplicates().values()) == 31


titles = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30
).filter(lambda s: s.strip() and "<|" not in s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(titles, min_size=1, max_size=12), data=st.data())
def test_unicode_titles_through_a_real_tokenizer(qwen2, names, data):
    extra = data.draw(st.lists(st.sampled_from(names), max_size=3))  # duplicate titles
    names = names + extra + [n + data.draw(titles) for n in names[:2]]  # titles that extend others
    catalog = Catalog.from_lists([f"i{k}" for k in range(len(names))], names)
    check_catalog(catalog, qwen2)
