"""The compact generative recommender: built for a SID dataset, a plain HF folder, and
run unchanged through the index, the sampler, `rere sft` and `rere evaluate`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rere.catalog import Catalog
from rere.cli import main
from rere.compact_model import COMPACT_TEMPLATE, TEMPLATE_FILE, compact_tokenizer
from rere.data.dataset import Dataset, Example
from rere.index import CatalogIndex
from rere.prompts import PromptTemplate, Prompter
from rere.sampler import beam_search, left_pad


def sid_dataset(n_items=40, users=60, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"i{k}" for k in range(n_items)]
    sids = [(f"<a_{k % 5}>", f"<b_{k // 5}>", "<c_0>") for k in range(n_items)]
    splits = {"train": [], "valid": [], "test": []}
    for u in range(users):
        seq = [ids[k] for k in rng.integers(0, n_items, 10)]
        splits["train"].append(Example(f"u{u}", tuple(seq[:7]), seq[7]))
        splits["valid"].append(Example(f"u{u}", tuple(seq[1:8]), seq[8]))
        splits["test"].append(Example(f"u{u}", tuple(seq[2:9]), seq[9]))
    return Dataset(Catalog.from_lists(ids, sids), splits, "synthetic-sid")


def test_the_tokenizer_reads_sids_and_the_compact_prompt_as_whole_tokens():
    dataset = sid_dataset()
    tokenizer = compact_tokenizer(dataset.catalog)
    template = PromptTemplate(text=COMPACT_TEMPLATE)
    prompt = Prompter(dataset.catalog, template=template).prompt(("i0", "i7"))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert tokens == ["<a_0>", "<b_0>", "<c_0>", ",", "<a_2>", "<b_1>", "<c_0>", "###", "Response", ":", "\n"]
    # <pad> <eos> <unk>; "###" "Response" ":" ","; "\n"; <a_0..4>, <b_0..7>, <c_0>
    assert len(tokenizer) == 3 + 4 + 1 + 5 + 8 + 1
    with pytest.raises(ValueError, match="rere sid build"):
        compact_tokenizer(Catalog.from_lists(["x"], ["A title"]))


def test_init_then_sampler_sft_and_evaluate_run_on_it(tmp_path, capsys):
    dataset = sid_dataset()
    dataset.save(tmp_path / "data")
    assert main(["model", "init", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "model")]) == 0
    assert main(["model", "init", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "model")]) == 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model", local_files_only=True)
    assert model.config.vocab_size == len(tokenizer) and model.config.rere_compact["layers"] == 2
    assert sum(p.numel() for p in model.parameters()) < 1_000_000

    template = PromptTemplate(text=(tmp_path / "model" / TEMPLATE_FILE).read_text())
    prompter = Prompter(dataset.catalog, template=template)
    index = CatalogIndex.from_catalog(dataset.catalog, tokenizer, template=prompter.completion_format,
                                      context=template.context, vocab_size=model.config.vocab_size)
    ids, mask = left_pad([tokenizer(prompter.prompt(e.history), add_special_tokens=False)["input_ids"]
                          for e in dataset.splits["test"][:3]], tokenizer.pad_token_id)
    with torch.no_grad():
        out = beam_search(model, index, ids, mask, num_beams=8, eos_token_id=tokenizer.eos_token_id)
    assert out.valid.all() and (out.item_ids >= 0).all()

    template_file = str(tmp_path / "model" / TEMPLATE_FILE)
    assert main(["sft", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "model"), "--template",
                 template_file, "-o", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16",
                 "--lr", "1e-3", "--eval-examples", "20", "--eval-beams", "5"]) == 0
    # ReRe without validation examples: best/ is still the final model, a plain HF folder.
    assert main(["train", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "run" / "best"), "--template",
                 template_file, "-o", str(tmp_path / "rere"), "--max-steps", "2", "--prompts-per-step", "4",
                 "--num-generations", "4", "--eval-examples", "0"]) == 0
    assert "no validation examples: best/ is the final model" in capsys.readouterr().out
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "rere" / "best", local_files_only=True)
    assert AutoTokenizer.from_pretrained(tmp_path / "rere" / "best", local_files_only=True).vocab == tokenizer.vocab
    assert not torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)  # it trained
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "run" / "best"),
                 "--template", template_file, "-o", str(tmp_path / "eval"), "--beams", "10", "--limit", "20"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 20 and metrics["invalid"] == 0
