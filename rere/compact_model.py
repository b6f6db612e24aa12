"""A compact generative recommender: a small Llama, from scratch, over a vocabulary of the
catalog's semantic-ID tokens and the few words of a compact prompt.

A 135M LLM over 12-30-token titles cannot be trained far on a CPU; with semantic IDs an
item is 3-4 tokens, a 10-item prompt ~50, and the vocabulary a few hundred tokens, so
the output layer over a 49k-token vocabulary, most of a small model's decode step, shrinks
to almost nothing. The model
and its tokenizer are a plain Hugging Face folder, so `Catalog`, `CatalogIndex`,
`rere.sampler`, `rere sft`, `rere train` and `rere evaluate` use it like any other model;
the folder also holds `prompt_template.txt`, the compact prompt to pass as `--template`:

    <a_1><b_7><c_3>,\t<a_9><b_0><c_5>,\t ... ### Response:\n
    -> the model writes the next item's SID tokens, a newline, then <eos>

(the history items joined by the default separator, whose "," is one token; the tab and
the spaces are not tokens).

The tokenizer: every SID token and the newline are added tokens (matched whole, wherever
they stand); other text is split into words and punctuation (the template's words are in
the vocabulary; anything else is <unk>).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rere.catalog import DEFAULT_CONTEXT, Catalog
from rere.prompts import PromptTemplate

COMPACT_TEMPLATE = "{history}" + DEFAULT_CONTEXT  # items separated by the template's separator
TEMPLATE_FILE = "prompt_template.txt"
SPECIAL = ("<pad>", "<eos>", "<unk>")


@dataclass
class CompactModelConfig:
    """Llama sizes. The defaults, 2 layers x 128: on ML-100K (78,675 training rows) an SFT
    epoch at batch 64 takes ~3 minutes on 2 CPU cores (benchmarks/RESULTS.md)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 512
    max_positions: int = 512
    seed: int = 0


def compact_tokenizer(catalog: Catalog, template: str = COMPACT_TEMPLATE):
    """A word-level fast tokenizer: SID tokens and "\\n" as added tokens, the template's
    words (and punctuation) as its vocabulary, <pad> / <eos> / <unk> as specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AddedToken, PreTrainedTokenizerFast

    if catalog.kind != "semantic_id":
        raise ValueError("a compact model needs a catalog of semantic IDs: build one with `rere sid build`")
    splitter = pre_tokenizers.Whitespace()
    text = template.format(history=PromptTemplate().separator, category="item")
    words = sorted({word for word, _ in splitter.pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate([*SPECIAL, *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    sid_tokens = sorted({token for identifier in catalog.identifiers for token in identifier})
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in ["\n", *sid_tokens]])
    return tokenizer


def init_compact_model(catalog: Catalog, out: str | os.PathLike, config: CompactModelConfig | None = None) -> Path:
    """Write a freshly initialised compact model, its tokenizer and its prompt template to
    `out` (a new folder, written aside and renamed into place)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rere.files import write_folder_atomically

    config = config or CompactModelConfig()
    tokenizer = compact_tokenizer(catalog)
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
        max_position_embeddings=config.max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    model.config.rere_compact = asdict(config)  # saved in config.json: how the model was made

    def fill(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / TEMPLATE_FILE).write_text(COMPACT_TEMPLATE, encoding="utf-8")

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder for the model")
    return write_folder_atomically(out, fill)
