"""RPORec's reasoning: the prompt, the format check, generation cut at </answer>, the cache."""
from __future__ import annotations

import pytest

from rere.rporec.reasoning import (ANSWER_CLOSE, Generation, ReasoningCache, generate_reasonings, parse_completion,
                                   reasoning_prompter, user_sequence)
from rporec_fixtures import JUNK, formatted_model, rporec_world


@pytest.fixture(scope="module")
def world():
    dataset, tokenizer = rporec_world()
    return dataset, tokenizer, formatted_model(dataset, tokenizer)


@pytest.mark.parametrize("text, reasoning, answer, ok", [
    ("likes pens.</think>\n<answer>Red Pen</answer>", "likes pens.", "Red Pen", True),
    ("likes pens.</think><answer>Red Pen</answer>  \n", "likes pens.", "Red Pen", True),
    ("likes pens.</think>\n<answer>Red Pen</answer> and more", "likes pens.", None, False),  # text after it
    ("likes pens.</think>\nRed Pen", "likes pens.", None, False),  # no answer tags
    ("likes pens and never stops", "likes pens and never stops", None, False),  # cut by the length limit
    ("</think><answer>Red Pen</answer>", "", "Red Pen", False),  # no reasoning
    ("a<think>b</think><answer>c</answer>", "a<think>b", "c", False),  # nested tags
])
def test_the_format_check(text, reasoning, answer, ok):
    parsed = parse_completion(text)
    assert (parsed.reasoning, parsed.well_formed) == (reasoning, ok)
    assert parsed.answer == answer


def test_the_prompt_ends_inside_the_think_tag_and_keeps_rere_history():
    dataset, _ = rporec_world()
    history = dataset.splits["test"][3].history
    text = reasoning_prompter(dataset).prompt(history)
    assert text.endswith("### Response:\n<think>\n")
    titles = ",\t".join(f'"{dataset.catalog.text(dataset.catalog.index_of(h))}"' for h in history)
    assert f"The user has bought the following office products before: {titles}\n" in text


def test_generation_stops_after_the_answer_and_drops_what_follows(world):
    dataset, tokenizer, model = world
    prompter = reasoning_prompter(dataset)
    prompts = tokenizer([prompter.prompt(e.history) for e in dataset.splits["test"][:4]],
                        add_special_tokens=False)["input_ids"]
    outs = generate_reasonings(model, tokenizer, prompts, num_samples=3, max_new_tokens=40, generator_seed=5)
    assert [len(o) for o in outs] == [3, 3, 3, 3]
    formed = [g.parsed.well_formed for o in outs for g in o]
    assert sum(formed) >= 10, [g.text for o in outs for g in o]
    for o in outs:
        for g in o:
            if g.parsed.well_formed:
                assert g.text.rstrip().endswith(ANSWER_CLOSE) and JUNK.strip() not in g.text
                # the tokens are exactly the text, cut at the token completing </answer>
                assert tokenizer.decode(g.tokens, skip_special_tokens=True) == g.text
                assert ANSWER_CLOSE not in tokenizer.decode(g.tokens[:-1], skip_special_tokens=True)
    again = generate_reasonings(model, tokenizer, prompts, num_samples=3, max_new_tokens=40, generator_seed=5)
    assert [[g.tokens for g in o] for o in again] == [[g.tokens for g in o] for o in outs]
    greedy = generate_reasonings(model, tokenizer, prompts[:1], do_sample=False, max_new_tokens=40)[0][0]
    assert greedy.parsed.well_formed
    capped = generate_reasonings(model, tokenizer, prompts[:1], do_sample=False, max_new_tokens=3)[0][0]
    assert len(capped.tokens) == 3 and not capped.parsed.well_formed


def test_user_sequence_drops_a_final_eos():
    assert user_sequence([1, 2], Generation([7, 8, 0], "x"), eos=0) == [1, 2, 7, 8]
    assert user_sequence([1, 2], Generation([7, 8], "x"), eos=0) == [1, 2, 7, 8]
    assert user_sequence([1, 2], None, eos=0) == [1, 2]


def test_the_cache_resumes_and_refuses_other_settings(world, tmp_path):
    dataset, tokenizer, model = world
    examples = dataset.splits["test"][:6]
    prompts = tokenizer([reasoning_prompter(dataset).prompt(e.history) for e in examples],
                        add_special_tokens=False)["input_ids"]
    settings = {"model": "tiny", "max_new_tokens": 12}
    whole = ReasoningCache(tmp_path / "a", settings).fill(model, tokenizer, examples, prompts, batch_size=2,
                                                          progress=False, max_new_tokens=12, generator_seed=1)
    # An interrupted run: 2 complete lines and a torn third; the resumed one draws the rest.
    cache = ReasoningCache(tmp_path / "b", settings)
    cache.fill(model, tokenizer, examples, prompts, indices=[0, 1], batch_size=2, progress=False, max_new_tokens=12,
               generator_seed=1)
    with open(tmp_path / "b" / "reasonings.jsonl", "a") as f:
        f.write('{"example": 2, "te')
    resumed = ReasoningCache(tmp_path / "b", settings).fill(model, tokenizer, examples, prompts, batch_size=2,
                                                            progress=False, max_new_tokens=12, generator_seed=1)
    assert [[g.tokens for g in gens] for gens in resumed] == [[g.tokens for g in gens] for gens in whole]
    assert len((tmp_path / "b" / "reasonings.jsonl").read_text().splitlines()) == 6
    with pytest.raises(ValueError, match="other settings .*max_new_tokens"):
        ReasoningCache(tmp_path / "b", {**settings, "max_new_tokens": 13})
