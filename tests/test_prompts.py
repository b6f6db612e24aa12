"""Prompts: the ReRe layout, history capping by whole items, and completions that tokenize
exactly as the catalog index expects after the prompt."""
from __future__ import annotations

import pytest

from rere.catalog import Catalog
from rere.prompts import PromptTemplate, Prompter

TITLES = Catalog.from_lists(["a", "b", "c"], ["Red Pen", "Blue Ink", "Pad of Paper, 50 Sheets"])


def test_rere_layout():
    prompt = Prompter(TITLES, "office product").prompt(("a", "b"))
    assert prompt.endswith(
        'The user has bought the following office products before: "Red Pen",\t"Blue Ink"\n\n### Response:\n')
    assert prompt.startswith("Below is an instruction")
    assert Prompter(TITLES).completion("c") == '"Pad of Paper, 50 Sheets"\n'


def test_semantic_ids_are_bare():
    sids = Catalog.from_lists(["x", "y"], [["<a_1>", "<b_2>"], ["<a_3>", "<b_4>"]])
    prompter = Prompter(sids, template=PromptTemplate(text="{history}\n### Response:\n"))
    assert prompter.prompt(("x", "y")) == "<a_1><b_2>,\t<a_3><b_4>\n### Response:\n"
    assert prompter.completion("y") == "<a_3><b_4>\n"


def test_user_templates_are_checked():
    with pytest.raises(ValueError, match="no {history} slot"):
        PromptTemplate(text="Recommend something.\n### Response:\n")
    with pytest.raises(ValueError, match="must end with the completion context"):
        PromptTemplate(text="{history}\nAnswer:")
    with pytest.raises(ValueError, match="item_format"):
        PromptTemplate(item_format="<item>")
    custom = PromptTemplate(text="History: {history}\n### Response:\n", separator=" | ", item_format="[{title}]")
    assert Prompter(TITLES, template=custom).prompt(("b", "a")) == "History: [Blue Ink] | [Red Pen]\n### Response:\n"


def test_capping_drops_the_oldest_whole_items(qwen2):
    history = ("a", "b", "c", "a", "b", "c")
    full = Prompter(TITLES, tokenizer=qwen2, max_prompt_tokens=10_000).prompt(history)
    length = lambda text: len(qwen2(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    limit = length(full) - 3  # too long by a bit: the oldest item must go, and only it
    capped = Prompter(TITLES, tokenizer=qwen2, max_prompt_tokens=limit).prompt(history)
    assert capped == Prompter(TITLES).prompt(history[1:])
    assert length(capped) <= limit
    with pytest.raises(ValueError, match="empty history"):
        Prompter(TITLES, tokenizer=qwen2, max_prompt_tokens=5).prompt(history)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        Prompter(TITLES, max_prompt_tokens=5)


def test_prompt_plus_completion_tokenizes_as_prompt_then_index_sequence(qwen2):
    """What SFT trains on (prompt + completion) must split into the prompt's tokens and the
    item's sequence in the catalog index, or constrained decoding would not match training."""
    tokenized = TITLES.tokenize(qwen2)
    prompter = Prompter(TITLES, "office product")
    for i, item in enumerate(TITLES.ids):
        prompt = prompter.prompt(("a", "b"))
        together = qwen2(prompt + prompter.completion(item), add_special_tokens=False)["input_ids"]
        alone = qwen2(prompt, add_special_tokens=False)["input_ids"]
        assert together == alone + tokenized.sequence(i)[:-1].tolist()  # the index adds EOS
