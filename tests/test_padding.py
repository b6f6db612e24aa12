"""`rere.sampler.left_pad`: the prompt layout of beam_search and sample, with no tokenizer pad token."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rere.evaluation import rank_prompts
from rere.index import CatalogIndex
from rere.sampler import left_pad
from tiny_models import tiny_model


def test_prompts_are_right_aligned_and_masked():
    ids, mask = left_pad([[5, 6, 7], torch.tensor([8]), []], pad_token_id=9)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.int64


def test_no_prompts_is_an_error():
    with pytest.raises(ValueError, match="at least one prompt"):
        left_pad([])


def test_rank_prompts_works_with_a_tokenizer_that_has_no_pad_token():
    # SmolLM2's tokenizer as transformers converts it from GGUF has no pad token, and
    # tokenizer(..., padding=True) refuses it; evaluation must not depend on one.
    vocab = {chr(ord("a") + i): i for i in range(26)} | {"<eos>": 26}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    assert tokenizer.pad_token is None
    model = tiny_model("llama", 27).eval()
    index = CatalogIndex.from_sequences([[1, 2, 26], [3, 26], [4, 5, 26]], vocab_size=27)
    items, scores = rank_prompts(model, tokenizer, index, ["abc", "defgh"], num_beams=3)
    assert [sorted(row) for row in items] == [[0, 1, 2], [0, 1, 2]]
    assert all(s == sorted(s, reverse=True) for s in scores)
