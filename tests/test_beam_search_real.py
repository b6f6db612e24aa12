"""beam_search on the real Amazon catalog through the real Qwen2 tokenizer, and at 1M items."""
from __future__ import annotations

import pytest
import torch

from conftest import shared_path
from rere.catalog import Catalog
from rere.index import CatalogIndex
from rere.sampler import beam_search
from rere.synthetic import title_like_catalog
from sampler_fixtures import PrefixDictProcessor, completion
from tiny_models import tiny_model
from transformers import LogitsProcessorList

QWEN2_MODEL_VOCAB = 151_936  # Qwen2 models pad the tokenizer's 151,646 ids to this


@pytest.fixture(scope="module")
def amazon(qwen2):
    catalog = Catalog.from_tsv(shared_path("amazon-industrial-rere/info.txt"))
    tokenized = catalog.tokenize(qwen2)
    seqs = [tokenized.sequence(i).tolist() for i in range(len(catalog))]
    index = CatalogIndex.from_catalog(catalog, qwen2, vocab_size=QWEN2_MODEL_VOCAB)
    return catalog, seqs, index


def test_amazon_titles_match_hf_generate(amazon, qwen2):
    catalog, seqs, index = amazon
    model = tiny_model("qwen2", QWEN2_MODEL_VOCAB, seed=11)
    texts = ["The user bought \"Hydrofarm HGPP400 Precision Pruner\" before.\n### Response:\n",
             "Recommend an item.\n### Response:\n"]
    qwen2.padding_side = "left"
    batch = qwen2(texts, return_tensors="pt", padding=True)
    beams = 6
    eos = qwen2.eos_token_id
    with torch.no_grad():
        got = beam_search(model, index, batch.input_ids, batch.attention_mask, num_beams=beams)
        hf = model.generate(batch.input_ids, attention_mask=batch.attention_mask, num_beams=beams,
                            num_return_sequences=beams, max_new_tokens=index.max_depth, do_sample=False,
                            length_penalty=0.0,
                            early_stopping=False, eos_token_id=eos, pad_token_id=eos,
                            logits_processor=LogitsProcessorList([PrefixDictProcessor(seqs, batch.input_ids.shape[1])]),
                            output_scores=True, return_dict_in_generate=True)
    width = batch.input_ids.shape[1]
    hf_tokens = hf.sequences[:, width:].reshape(2, beams, -1)
    hf_scores = hf.sequences_scores.reshape(2, beams)
    duplicates = {i for ids in catalog.duplicates().values() for i in ids}
    for p in range(2):
        ours = [tuple(got.sequences[p, g, :got.lengths[p, g]].tolist()) for g in range(beams)]
        want = [tuple(completion(t, eos)) for t in hf_tokens[p].tolist()]
        assert ours == want
        assert torch.allclose(got.scores[p], hf_scores[p], atol=1e-4)
        for g in range(beams):  # each completion decodes to its item's title, quoted
            items = got.items(p, g)
            assert qwen2.decode(ours[g][:-1]) == f'"{catalog.identifiers[items[0]]}"\n'
            assert len(items) == 1 or set(items) <= duplicates


def test_one_million_items_with_a_tiny_model():
    tokens, offsets = title_like_catalog(1_000_000, seed=2)
    index = CatalogIndex.from_flat(tokens, offsets, vocab_size=QWEN2_MODEL_VOCAB)
    model = tiny_model("llama", QWEN2_MODEL_VOCAB, seed=5)
    ids = torch.randint(0, 151_000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = beam_search(model, index, ids, num_beams=8, eos_token_id=151_643)
    assert got.valid.all()
    for p in range(2):
        items = got.item_ids[p].tolist()
        assert len(set(items)) == 8  # distinct items
        for g, item in enumerate(items):
            want = tokens[offsets[item]:offsets[item + 1]].tolist()
            assert got.sequences[p, g, :got.lengths[p, g]].tolist() == want
        assert torch.all(got.scores[p, :-1] >= got.scores[p, 1:])  # best first
