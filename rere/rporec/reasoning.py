"""RPORec's reasoning: the prompt that asks for it, its generation, its format check, its cache.

The prompt is ReRe's (same instruction layout, same history) with one more sentence asking
for the reasoning and the answer in tags, and it ends inside the think tag, so the model
starts reasoning at once:

    ... The user has bought the following {category}s before: "A",	"B",	...

    ### Response:
    <think>

The model then writes `reasoning</think>` and `<answer>a title</answer>`; generation stops
at `</answer>` (or EOS, or `max_new_tokens`). A completion is well formed when it has a
non-empty reasoning closed by `</think>`, then one answer tag pair, and nothing after it.
The RecHead reads the prompt and the whole completion (`user_sequence`); the answer's title
is the model's own guess, which the head may use or not. RPORec does not need the answer to
name a catalog item: the head ranks the catalog.

Generation is `rere.sampler.text_sampling.sample_text` (HF generate's sampling with
temperature and top-p, or greedy; each prompt prefilled once for its samples), prompts
left-padded with `rere.sampler.left_pad`. `ReasoningCache` appends each batch's
reasonings to a JSONL file (text and token ids), so stage 1 generates each prompt's
reasoning once and an interrupted run resumes after the last complete line.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rere.files import check_settings, complete_jsonl_lines
from rere.prompts import PromptTemplate, Prompter
from rere.rporec.encoding import pad_id
from rere.sampler import left_pad
from rere.sampler.text_sampling import sample_text

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
SAMPLER = "rere.sampler.text_sampling/1"  # recorded with cached reasonings
REASONING_CONTEXT = f"### Response:\n{THINK_OPEN}\n"
REASONING_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
    "### Instruction:\n"
    "Given a list of {category}s the user recently enjoyed, think step by step about what the user likes, "
    "then name a new {category} that the user may buy. Write your reasoning inside "
    f"{THINK_OPEN}{THINK_CLOSE} and the {{category}} inside {ANSWER_OPEN}{ANSWER_CLOSE}.\n\n"
    "### User Input: \n"
    "The user has bought the following {category}s before: {history}\n\n"
    + REASONING_CONTEXT
)
_WELL_FORMED = re.compile(rf"(?s)(?P<reasoning>.*?){re.escape(THINK_CLOSE)}\s*{re.escape(ANSWER_OPEN)}"
                          rf"(?P<answer>.*?){re.escape(ANSWER_CLOSE)}\s*")


def reasoning_template() -> PromptTemplate:
    return PromptTemplate(text=REASONING_TEMPLATE, context=REASONING_CONTEXT)


def reasoning_prompter(dataset, tokenizer=None, max_prompt_tokens: int | None = None) -> Prompter:
    return Prompter(dataset.catalog, dataset.category, reasoning_template(), tokenizer, max_prompt_tokens)


@dataclass(frozen=True)
class ParsedReasoning:
    reasoning: str  # the text before </think> (everything, when it never closes)
    answer: str | None  # inside the answer tags; None without them
    well_formed: bool


def parse_completion(text: str) -> ParsedReasoning:
    """Split a completion (the text after the prompt's `<think>`, special tokens removed)."""
    match = _WELL_FORMED.fullmatch(text)
    if match is None:
        return ParsedReasoning(text.split(THINK_CLOSE)[0].strip(), None, False)
    reasoning, answer = match["reasoning"].strip(), match["answer"].strip()
    nested = any(tag in reasoning + answer for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE))
    return ParsedReasoning(reasoning, answer, bool(reasoning) and not nested)


@dataclass
class Generation:
    """One completion: its token ids (up to the end of `</answer>`, or EOS included, or the
    length limit) and its text without special tokens."""

    tokens: list[int]
    text: str

    @property
    def parsed(self) -> ParsedReasoning:
        return parse_completion(self.text)


@torch.no_grad()
def generate_reasonings(model, tokenizer, prompts: list[list[int]], *, num_samples: int = 1,
                        max_new_tokens: int = 128, do_sample: bool = True, temperature: float = 0.7,
                        top_p: float = 1.0, generator_seed: int | None = None) -> list[list[Generation]]:
    """`num_samples` completions per prompt (token-id lists), sampled with temperature and
    top-p (or greedy with do_sample=False) by `rere.sampler.text_sampling.sample_text`: each
    prompt prefilled once for its samples; stopping at `</answer>`, EOS or the limit.
    `generator_seed` seeds the draws (default: torch's global generator)."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = pad_id(tokenizer)
    ids, mask = left_pad(prompts, pad)
    generator = None if generator_seed is None else torch.Generator(device).manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    try:
        out = sample_text(model, ids.to(device), mask.to(device), num_samples=num_samples,
                          max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                          eos_token_id=eos, pad_token_id=pad, stop_strings=(ANSWER_CLOSE,), tokenizer=tokenizer,
                          generator=generator)
    finally:
        model.train(was_training)
    return [[_cut(tokenizer, row, eos) for row in rows] for rows in out.rows()]


def _cut(tokenizer, row: list[int], eos: int | None) -> Generation:
    """The tokens the model really generated: up to the first EOS (included), then, if the
    text holds `</answer>`, up to the token that completes it (what follows is padding)."""
    if eos is not None and eos in row:
        row = row[:row.index(eos) + 1]
    text = tokenizer.decode(row, skip_special_tokens=True)
    if ANSWER_CLOSE in text:
        low, high = 1, len(row)  # the shortest prefix whose text contains the stop string
        while low < high:
            middle = (low + high) // 2
            if ANSWER_CLOSE in tokenizer.decode(row[:middle], skip_special_tokens=True):
                high = middle
            else:
                low = middle + 1
        row = row[:low]
        text = tokenizer.decode(row, skip_special_tokens=True)
    return Generation(row, text)


def user_sequence(prompt_tokens: list[int], generation: Generation | None, eos: int | None) -> list[int]:
    """What the RecHead reads: the prompt and the completion, without a final EOS (whose
    state says "done", not "this user"). Without a generation: the prompt alone."""
    tokens = list(generation.tokens) if generation is not None else []
    if tokens and eos is not None and tokens[-1] == eos:
        tokens = tokens[:-1]
    return list(prompt_tokens) + tokens


class ReasoningCache:
    """`reasonings.jsonl` + `settings.json` in a folder: per example index, its prompt's
    completions ({"example", "user", "texts", "tokens", "well_formed"}), appended batch by
    batch and fsynced. The settings (model, generation) must match to reuse the file."""

    def __init__(self, folder: str | os.PathLike, settings: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        # Which sampler drew them: the same seed draws other reasonings with another one.
        check_settings(self.folder / "settings.json", {**settings, "sampler": SAMPLER}, "reasonings")
        self.path = self.folder / "reasonings.jsonl"
        self.lines = complete_jsonl_lines(self.path)

    def fill(self, model, tokenizer, examples: list, prompts, *, indices: list[int] | None = None,
             batch_size: int = 8, progress: bool = True, desc: str = "reasoning",
             **generation) -> list[list[Generation]]:
        """Completions of the examples at `indices` (default: all), generating only those not
        cached yet. `prompts[i]`: example i's prompt token ids (a list, or a dict by index).
        `generator_seed` (in `generation`) seeds each batch by its first example index, so a
        resumed run draws what an uninterrupted one would."""
        indices = list(range(len(examples))) if indices is None else list(indices)
        todo = [i for i in indices if i not in self.lines]
        seed = generation.pop("generator_seed", None)
        with open(self.path, "a", encoding="utf-8") as sink, \
                tqdm(total=len(indices), initial=len(indices) - len(todo), desc=desc, unit="prompt",
                     disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                outs = generate_reasonings(model, tokenizer, [prompts[i] for i in batch],
                                           generator_seed=None if seed is None else seed + batch[0], **generation)
                for i, gens in zip(batch, outs):
                    line = {"example": i, "user": examples[i].user, "texts": [g.text for g in gens],
                            "tokens": [g.tokens for g in gens], "well_formed": [g.parsed.well_formed for g in gens]}
                    sink.write(json.dumps(line, ensure_ascii=False) + "\n")
                    self.lines[i] = line
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(len(batch))
        return [[Generation(t, x) for t, x in zip(self.lines[i]["tokens"], self.lines[i]["texts"])]
                for i in indices]
