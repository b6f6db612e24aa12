"""A small RPORec world for the tests: a 24-item office catalog, a byte-level BPE learnt from
the reasoning prompt and the titles, and a tiny Llama taught (in a second) to answer in
RPORec's format: `The user likes <a history title>.</think><answer><a title></answer>`
followed by junk it must be stopped before."""
from __future__ import annotations

import random

import torch

from rere.rporec.reasoning import REASONING_TEMPLATE, reasoning_prompter
from test_evaluation import office_dataset
from tiny_models import tiny_bpe_tokenizer, tiny_model

JUNK = " and more and more"


def rporec_world(n_examples: int = 40):
    dataset = office_dataset(24, n_examples)
    titles = [dataset.catalog.text(i) for i in range(len(dataset.catalog))]
    texts = [REASONING_TEMPLATE] + [f'"{t}"' for t in titles] + [
        f"The user likes {t}.</think>\n<answer>{t}</answer>{JUNK}" for t in titles]
    tokenizer = tiny_bpe_tokenizer(texts, vocab_size=500)
    return dataset, tokenizer


def formatted_model(dataset, tokenizer, steps: int = 60, seed: int = 0):
    """A tiny Llama fine-tuned to write a well-formed reasoning naming one of the history's
    items (drawn at random, so sampled reasonings differ), then junk after </answer>."""
    model = tiny_model("llama", len(tokenizer), seed=seed).train()
    prompter = reasoning_prompter(dataset)
    rng = random.Random(seed)
    examples = dataset.splits["test"]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    catalog = dataset.catalog
    for _ in range(steps):
        batch = rng.sample(examples, 8)
        rows = []
        for e in batch:
            liked = catalog.text(catalog.index_of(rng.choice(e.history)))
            prompt = tokenizer(prompter.prompt(e.history), add_special_tokens=False)["input_ids"]
            answer = tokenizer(f"The user likes {liked}.</think>\n<answer>{liked}</answer>{JUNK}",
                               add_special_tokens=False)["input_ids"]
            rows.append((prompt, answer))
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        for r, (p, a) in enumerate(rows):
            ids[r, :len(p) + len(a)] = torch.tensor(p + a)
            labels[r, len(p):len(p) + len(a)] = torch.tensor(a)
            mask[r, :len(p) + len(a)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
