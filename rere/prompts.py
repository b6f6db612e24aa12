"""Prompts: a user's history as text, and the item completion the model must generate.

The default is the ReRe/D3 prompt (their `data.py`, evaluation form): an Alpaca-style
instruction, the history as quoted titles separated by ",<TAB>", oldest first, then
`### Response:\\n`, after which the model writes `"{title}"\\n` and EOS. Only the wording of
the instruction differs from theirs (one fixed instruction, spelled correctly, where they
draw one of eleven at random); the structure, quoting and separators are theirs, so item
tokenization matches models trained with their code.

The completion is tokenized by `Catalog.tokenize(context=template.context)`; the prompt
must therefore end with exactly that context (checked), or the item tokens would depend on
the prompt.

Long histories: `max_prompt_tokens` drops the oldest history items until the prompt fits,
never part of a title.
"""
from __future__ import annotations

from dataclasses import dataclass

from rere.catalog import DEFAULT_CONTEXT, Catalog

RERE_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
    "### Instruction:\n"
    "Given a list of {category}s the user recently enjoyed, please write a new {category} that the user may buy.\n\n"
    "### User Input: \n"
    "The user has bought the following {category}s before: {history}\n\n"
    "### Response:\n"
)


@dataclass(frozen=True)
class PromptTemplate:
    """`text` has a `{history}` slot (and may use `{category}`); each history item is
    `item_format` with `{title}` (default: quoted titles, bare semantic IDs), joined by
    `separator`. `completion_format` is what the model generates for an item; it must be the
    template the catalog was tokenized with."""

    text: str = RERE_TEMPLATE
    item_format: str | None = None
    separator: str = ",\t"
    completion_format: str | None = None
    context: str = DEFAULT_CONTEXT

    def __post_init__(self) -> None:
        if "{history}" not in self.text:
            raise ValueError("the prompt template has no {history} slot")
        if not self.text.endswith(self.context):
            raise ValueError(f"the prompt template must end with the completion context {self.context!r} "
                             "(the catalog is tokenized after it)")
        for name in ("item_format", "completion_format"):
            value = getattr(self, name)
            if value is not None and "{title}" not in value:
                raise ValueError(f"{name} {value!r} has no {{title}} slot")

    @classmethod
    def from_file(cls, path) -> "PromptTemplate":
        """A user template: the file's text, with {category} and {history} slots."""
        with open(path, encoding="utf-8") as f:
            return cls(text=f.read())


class Prompter:
    """Prompts and completions for one dataset's catalog."""

    def __init__(self, catalog: Catalog, category: str = "item", template: PromptTemplate | None = None,
                 tokenizer=None, max_prompt_tokens: int | None = None):
        if max_prompt_tokens is not None and tokenizer is None:
            raise ValueError("max_prompt_tokens needs a tokenizer to count tokens")
        self.catalog, self.category = catalog, category
        self.template = template or PromptTemplate()
        titled = catalog.kind == "title"
        self.item_format = self.template.item_format or ('"{title}"' if titled else "{title}")
        self.completion_format = self.template.completion_format or ('"{title}"\n' if titled else "{title}\n")
        self.tokenizer, self.max_prompt_tokens = tokenizer, max_prompt_tokens

    def prompt(self, history: tuple[str, ...] | list[str]) -> str:
        """The prompt for a history of item ids (oldest first), dropping the oldest items
        while it is longer than `max_prompt_tokens`."""
        if self.max_prompt_tokens is None:
            return self._render(history)
        # The length only grows with each item kept: binary-search the fewest items to drop.
        low, high = 0, len(history)
        while low < high:
            drop = (low + high) // 2
            if self._length(self._render(history[drop:])) <= self.max_prompt_tokens:
                high = drop
            else:
                low = drop + 1
        text = self._render(history[low:])
        if self._length(text) > self.max_prompt_tokens:
            raise ValueError(f"the prompt is {self._length(text)} tokens with an empty history, "
                             f"over max_prompt_tokens={self.max_prompt_tokens}")
        return text

    def completion(self, item_id: str) -> str:
        """What the model generates for this item (without EOS)."""
        return self.completion_format.format(title=self.catalog.text(self.catalog.index_of(item_id)))

    def _render(self, history) -> str:
        items = self.template.separator.join(
            self.item_format.format(title=self.catalog.text(self.catalog.index_of(item))) for item in history)
        return self.template.text.format(category=self.category, history=items)

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
