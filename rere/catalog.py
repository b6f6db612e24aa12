"""The item catalog: what a generative recommender may answer, and how it spells each item.

An item is named by a title ("Hydrofarm HGPP400 Precision Pruner") or by a semantic ID, a
short tuple of dedicated tokens ("<a_42>", "<b_194>", "<c_177>"). The model generates that
name after the prompt, so the catalog is turned into token sequences exactly as the model
will emit them; constrained decoding (the trie in `rere.index`) then only allows those
sequences, and maps a finished sequence back to the item's position in the catalog.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Identifier = Union[str, tuple[str, ...]]
"""A title, or a semantic ID as a tuple of tokens."""

DEFAULT_CONTEXT = "### Response:\n"
BATCH_SIZE = 4096  # texts per tokenizer call: fast tokenizers encode a batch in parallel
PROGRESS_MIN_ITEMS = 50_000  # smaller catalogs tokenize in seconds, no progress bar


class MissingTokensError(ValueError):
    """Semantic-ID tokens absent from the tokenizer, which would split them into pieces."""


@dataclass(eq=False)
class TokenizedCatalog:
    """Every item's completion token ids, concatenated in catalog order.

    Item i is `tokens[offsets[i]:offsets[i + 1]]`: one flat array instead of a list of
    lists keeps millions of items compact and hands straight to the C++ trie.
    """

    tokens: np.ndarray  # int32, all sequences back to back
    offsets: np.ndarray  # int64, len(catalog) + 1, offsets[0] == 0
    eos_token_id: int | None  # the last token of every sequence; None if tokenized without eos
    vocab_size: int  # len(tokenizer), added tokens included

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, i: int) -> np.ndarray:
        """Token ids of item i (a view into `tokens`)."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class Catalog:
    """Items in a fixed order; an item's index is its position (0..n-1).

    `ids[i]` is the dataset's item id, `identifiers[i]` its title or semantic ID. A catalog
    holds titles or semantic IDs, never both, and is validated on construction.
    """

    ids: tuple[str, ...]
    identifiers: tuple[Identifier, ...]
    _positions: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids, identifiers = tuple(self.ids), tuple(self.identifiers)
        if len(ids) != len(identifiers):
            raise ValueError(f"{len(ids)} item ids but {len(identifiers)} identifiers")
        if not ids:
            raise ValueError("empty catalog: no items")
        positions: dict[str, int] = {}
        checked = []
        for i, (item_id, identifier) in enumerate(zip(ids, identifiers)):
            if not isinstance(item_id, str) or not item_id.strip():
                raise ValueError(f"item {i}: item id {item_id!r} is not a non-empty string")
            if item_id in positions:
                raise ValueError(
                    f"item {item_id!r}: duplicate item id (items {positions[item_id]} and {i})"
                )
            positions[item_id] = i
            try:
                checked.append(_check_identifier(identifier))
            except ValueError as e:
                raise ValueError(f"item {item_id!r}: {e}") from None
            if type(checked[-1]) is not type(checked[0]):
                raise ValueError(
                    f"item {item_id!r}: {_kind(checked[-1])} in a catalog of {_kind(checked[0])}s;"
                    " a catalog holds titles or semantic IDs, not both"
                )
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "identifiers", tuple(checked))
        object.__setattr__(self, "_positions", positions)

    # -- loaders ------------------------------------------------------------------------

    @classmethod
    def from_lists(cls, ids: Sequence[str], identifiers: Sequence[str | Sequence[str]]) -> Catalog:
        """Build a catalog from parallel lists of item ids and titles or semantic IDs."""
        return cls(tuple(ids), tuple(identifiers))

    @classmethod
    def from_tsv(cls, path: str | os.PathLike) -> Catalog:
        """Load `title<TAB>item_id` lines (ReRe's `info.txt`); empty lines are skipped.

        Titles are kept as written, inner and leading whitespace included, because the
        model must generate them exactly. The id is whatever follows the last tab.
        """
        ids: list[str] = []
        titles: list[str] = []
        line_of: dict[str, int] = {}
        # newline="\n": split lines on "\n" only, so a stray "\r" cannot cut a title in two.
        with open(path, encoding="utf-8", newline="\n") as f:
            for number, line in enumerate(f, start=1):
                line = line.removesuffix("\n").removesuffix("\r")
                if not line:
                    continue
                where = f"{path}:{number}"
                title, tab, item_id = line.rpartition("\t")
                if not tab:
                    raise ValueError(f"{where}: no tab; expected 'title<TAB>item_id'")
                if not title.strip():
                    raise ValueError(f"{where}: empty title")
                if not item_id.strip():
                    raise ValueError(f"{where}: empty item id")
                if item_id in line_of:
                    raise ValueError(
                        f"{where}: duplicate item id {item_id!r} (first on line {line_of[item_id]})"
                    )
                line_of[item_id] = number
                ids.append(item_id)
                titles.append(title)
        return cls._from_file(path, ids, titles)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Catalog:
        """Load `{item_id: [token, ...]}` (semantic IDs, MiniOneRec's `index.json`) or
        `{item_id: "title"}`; items keep the file's order."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f, object_pairs_hook=_unique_keys)
        except ValueError as e:  # invalid JSON or a duplicate item id
            raise ValueError(f"{path}: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a JSON object {{item_id: title or [tokens]}}, "
                f"got a {type(data).__name__}"
            )
        return cls._from_file(path, list(data), list(data.values()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Catalog:
        """Load a `.json` file with `from_json`, anything else with `from_tsv`."""
        if os.fspath(path).lower().endswith(".json"):
            return cls.from_json(path)
        return cls.from_tsv(path)

    @classmethod
    def _from_file(cls, path: str | os.PathLike, ids: list, identifiers: list) -> Catalog:
        try:
            return cls(tuple(ids), tuple(identifiers))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    # -- queries ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._positions

    def __repr__(self) -> str:
        return f"Catalog({len(self)} items, {self.kind})"

    @property
    def kind(self) -> str:
        """Either "title" or "semantic_id"."""
        return "title" if isinstance(self.identifiers[0], str) else "semantic_id"

    def text(self, i: int) -> str:
        """Item i as text: its title, or its semantic-ID tokens concatenated."""
        identifier = self.identifiers[i]
        return identifier if isinstance(identifier, str) else "".join(identifier)

    def fingerprint(self) -> str:
        """A short digest of the items: ids and texts in order (titles quoted, as prompts show
        them). RecHeads record it (a head scores only the catalog it was trained on) and the
        tokenised-catalog cache is keyed by it."""
        digest = hashlib.sha256()
        for item_id, i in zip(self.ids, range(len(self))):
            text = f'"{self.text(i)}"' if self.kind == "title" else self.text(i)
            digest.update(f"{item_id}\t{text}\n".encode())
        return digest.hexdigest()[:16]

    def index_of(self, item_id: str) -> int:
        """Position of the item with this dataset id."""
        try:
            return self._positions[item_id]
        except KeyError:
            raise KeyError(f"item id {item_id!r} is not in the catalog") from None

    def duplicates(self) -> dict[Identifier, list[int]]:
        """Identifiers shared by two or more items, with their positions.

        Such items are indistinguishable once generated; evaluation counts a generated
        identifier as a hit for any of them.
        """
        positions: dict[Identifier, list[int]] = defaultdict(list)
        for i, identifier in enumerate(self.identifiers):
            positions[identifier].append(i)
        return {identifier: p for identifier, p in positions.items() if len(p) > 1}

    # -- tokenization -------------------------------------------------------------------

    def missing_tokens(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """Semantic-ID tokens not in the tokenizer's vocabulary, sorted ([] for titles)."""
        if self.kind == "title":
            return []
        tokens = self._sid_tokens()
        # Unknown tokens map to None, or to the unk id for tokenizers that have one.
        ids = tokenizer.convert_tokens_to_ids(tokens)
        return [token for token, i in zip(tokens, ids) if i is None or i == tokenizer.unk_token_id]

    def add_tokens_to(self, tokenizer: PreTrainedTokenizerBase) -> int:
        """Add the missing semantic-ID tokens to the tokenizer; returns how many were added.

        The model's embeddings must then grow to match, e.g.
        `model.resize_token_embeddings(len(tokenizer))`, or the new ids are out of range.
        """
        missing = self.missing_tokens(tokenizer)
        return tokenizer.add_tokens(missing) if missing else 0

    def tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: str | None = None,
        context: str = DEFAULT_CONTEXT,
        add_eos: bool = True,
        add_missing_tokens: bool = False,
    ) -> TokenizedCatalog:
        """Token ids the model generates for each item after the prompt's `context`.

        BPE tokenizes text differently depending on what precedes it, so an item is
        tokenized as `context + template.format(title=text)` and the context's own tokens
        are cut off; this is only sound if they come out unchanged (otherwise ValueError).
        The default template quotes titles (`'"{title}"\\n'`) and leaves semantic IDs bare
        (`'{title}\\n'`). With `add_eos`, each sequence ends with the tokenizer's eos token
        so that decoding knows where an item ends. Missing semantic-ID tokens raise
        `MissingTokensError` unless `add_missing_tokens` adds them (see `add_tokens_to`).
        """
        if template is None:
            template = '"{title}"\n' if self.kind == "title" else "{title}\n"
        if "{title}" not in template:
            raise ValueError(f"template {template!r} has no {{title}} placeholder")
        eos = tokenizer.eos_token_id if add_eos else None
        if add_eos and eos is None:
            raise ValueError("the tokenizer has no eos token; set one or pass add_eos=False")
        sid_token_ids = self._sid_token_ids(tokenizer, add_missing_tokens)
        prefix = tokenizer(context, add_special_tokens=False)["input_ids"]

        chunks: list[np.ndarray] = []
        lengths: list[int] = []
        with tqdm(
            total=len(self), desc="tokenizing catalog", unit="item",
            disable=len(self) <= PROGRESS_MIN_ITEMS,
        ) as progress:
            for start in range(0, len(self), BATCH_SIZE):
                stop = min(start + BATCH_SIZE, len(self))
                texts = [context + template.format(title=self.text(i)) for i in range(start, stop)]
                batch = tokenizer(texts, add_special_tokens=False)["input_ids"]
                completions = [
                    self._completion(i, ids, prefix, context, sid_token_ids, eos)
                    for i, ids in enumerate(batch, start=start)
                ]
                lengths.extend(map(len, completions))
                chunks.append(np.fromiter(itertools.chain.from_iterable(completions), np.int32))
                progress.update(stop - start)

        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TokenizedCatalog(np.concatenate(chunks), offsets, eos, len(tokenizer))

    def _sid_token_ids(
        self, tokenizer: PreTrainedTokenizerBase, add_missing: bool
    ) -> dict[str, int] | None:
        """Id of every semantic-ID token (None for titles), adding or reporting missing ones."""
        if self.kind == "title":
            return None
        missing = self.missing_tokens(tokenizer)
        if missing and not add_missing:
            raise MissingTokensError(
                f"{len(missing)} semantic-ID tokens are not in the tokenizer's vocabulary "
                f"(first: {', '.join(missing[:5])}) and would be split into pieces; call "
                "catalog.add_tokens_to(tokenizer) and resize the model's embeddings, "
                "or pass add_missing_tokens=True"
            )
        if missing:
            tokenizer.add_tokens(missing)
        tokens = self._sid_tokens()
        return dict(zip(tokens, tokenizer.convert_tokens_to_ids(tokens)))

    def _sid_tokens(self) -> list[str]:
        """The distinct semantic-ID tokens, sorted."""
        return sorted({token for sid in self.identifiers for token in sid})

    def _completion(
        self,
        i: int,
        ids: list[int],
        prefix: list[int],
        context: str,
        sid_token_ids: dict[str, int] | None,
        eos: int | None,
    ) -> list[int]:
        """Item i's ids after the context, checked, with eos appended if given."""
        if ids[: len(prefix)] != prefix:
            raise ValueError(
                f"{self._describe(i)}: the context {context!r} merges with the item text into "
                "different tokens, so the item's tokens depend on the prompt; end the context "
                "with a newline or change the template"
            )
        completion = ids[len(prefix) :]
        if not completion:
            raise ValueError(f"{self._describe(i)}: tokenizes to nothing after the context")
        if sid_token_ids is not None:
            sid = [sid_token_ids[token] for token in self.identifiers[i]]
            if not _contains_run(completion, sid):
                raise ValueError(
                    f"{self._describe(i)}: its semantic-ID tokens do not come out as single "
                    f"tokens {sid} (got {completion}); add them to the tokenizer as added tokens"
                )
        if eos is not None:
            if eos in completion:  # e.g. a title containing "<|endoftext|>"
                raise ValueError(
                    f"{self._describe(i)}: contains the eos token {eos}, which would end it early"
                )
            completion.append(eos)
        return completion

    def _describe(self, i: int) -> str:
        return f"item {i} (id {self.ids[i]!r}, {_kind(self.identifiers[i])} {self.text(i)!r})"


def _check_identifier(identifier: object) -> Identifier:
    """A valid title or semantic ID (lists become tuples), else ValueError saying why."""
    if isinstance(identifier, str):
        if not identifier.strip():
            raise ValueError("empty title")
        return identifier
    if isinstance(identifier, (list, tuple)):
        if not identifier:
            raise ValueError("empty semantic ID")
        for token in identifier:
            if not isinstance(token, str) or not token.strip():
                raise ValueError(f"semantic-ID token {token!r} is not a non-empty string")
        return tuple(identifier)
    raise ValueError(f"{identifier!r} is neither a title nor a list of semantic-ID tokens")


def _contains_run(sequence: list[int], run: list[int]) -> bool:
    """Whether `run` occurs in `sequence` contiguously."""
    n = len(run)
    return any(sequence[j : j + n] == run for j in range(len(sequence) - n + 1))


def _kind(identifier: Identifier) -> str:
    return "title" if isinstance(identifier, str) else "semantic ID"


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """JSON object hook: a repeated key is a duplicate item id (json keeps the last silently)."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"item {key!r}: duplicate item id")
        seen[key] = value
    return seen
