"""`TrieLogitsProcessor`: the catalog constraint as a Hugging Face `LogitsProcessor`.

A drop-in for code that already calls `model.generate` (beam search or sampling) and wants
its completions restricted to the catalog, without rere's own sampler:

```python
from transformers import LogitsProcessorList
from rere.sampler.hf import TrieLogitsProcessor

out = model.generate(input_ids, attention_mask=mask, num_beams=16, num_return_sequences=16,
                     length_penalty=0.0, max_new_tokens=index.max_depth,
                     logits_processor=LogitsProcessorList([TrieLogitsProcessor(index)]))
```

With beam search this gives exactly what the reference dict-of-prefixes processor gives
(same beams, order and `sequences_scores`), and what `rere.sampler.beam_search` returns
faster. The processor keeps no per-beam state: at every step it walks each row's generated
tokens from the trie's root (one batched `index.advance` per position, no Python loop over
rows), so HF's beam reordering needs no bookkeeping. Every disallowed token's score becomes
`-inf`, scattered from the CSR result of `index.allowed`; a row whose tokens left the trie
gets `-inf` everywhere. Rows that already emitted EOS (sampling keeps calling the processor
on finished rows, then replaces their token by the pad token) are left untouched, so that
sampling never sees a row without any finite score.

Cost: step t walks t tokens per row, O(T^2) `advance` calls over a completion of T tokens
(T ~ 30 for titles); each call is one vectorised query, on the device of the scores.
"""
from __future__ import annotations


import torch
from transformers import LogitsProcessor

from rere.index import CatalogIndex

__all__ = ["TrieLogitsProcessor"]


class TrieLogitsProcessor(LogitsProcessor):
    """Restrict `model.generate` to the catalog's token sequences.

    Args:
        index: the catalog index (on any device; it is moved to the scores' device once and
            the copy kept).
        prompt_length: the width of the (padded) prompt in `input_ids`: the tokens generated
            so far are `input_ids[:, prompt_length:]`. Default: `input_ids.shape[1]` at the
            first call, i.e. the padded prompt width of the `generate` call.
        eos_token_id: rows that contain it after the prompt are finished and left untouched.
            Default: the index's (set by `CatalogIndex.from_catalog`), else the token that ends
            every catalog sequence if there is one (found in the trie once); else none, and a
            finished row gets all `-inf` like any row with nothing allowed (fine for beam
            search, which never passes finished rows; sampling then fails on such a row).

    One instance serves one `generate` call when `prompt_length` is left to its default (the
    width is recorded at the first call): build a new one per call, or call `reset()`
    between calls.
    """

    def __init__(self, index: CatalogIndex, prompt_length: int | None = None, eos_token_id: int | None = None):
        self.index = index
        self._given_prompt_length = prompt_length
        self.prompt_length = prompt_length
        if eos_token_id is None:
            eos_token_id = index.metadata.get("eos_token_id")
        self._eos_token_id = None if eos_token_id is None else int(eos_token_id)

    @property
    def eos_token_id(self) -> int | None:
        """The EOS that marks a row finished (found in the trie at first use if not given)."""
        if self._eos_token_id is None:
            self._eos_token_id = self.index.final_token
        return self._eos_token_id

    def reset(self) -> "TrieLogitsProcessor":
        """Forget the recorded prompt width, for the next `generate` call."""
        self.prompt_length = self._given_prompt_length
        return self

    def states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Trie state of every row after its generated tokens (`INVALID` once off the trie)."""
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        if input_ids.shape[1] < self.prompt_length:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} columns, fewer than the prompt width {self.prompt_length} "
                "recorded at the first call: a TrieLogitsProcessor serves one generate call; "
                "call reset() or build a new one")
        index = self.index.to(input_ids.device)
        generated = input_ids[:, self.prompt_length:]
        states = index.root_states(input_ids.shape[0])
        for t in range(generated.shape[1]):
            states = index.advance(states, generated[:, t])
        return states

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] < self.index.vocab_size:
            raise ValueError(f"scores have {scores.shape[-1]} columns but the index has vocab_size "
                             f"{self.index.vocab_size}")
        states = self.states(input_ids).to(scores.device)
        offsets, tokens = self.index.to(scores.device).allowed(states)
        offsets, tokens = offsets.to(scores.device), tokens.to(scores.device, torch.int64)
        rows = torch.repeat_interleave(torch.arange(states.numel(), device=scores.device), offsets.diff(),
                                       output_size=tokens.numel())
        masked = torch.full_like(scores, float("-inf"))
        masked[rows, tokens] = scores[rows, tokens]
        eos = self.eos_token_id
        if eos is not None:
            finished = (input_ids[:, self.prompt_length:] == eos).any(dim=1)
            masked = torch.where(finished.to(scores.device)[:, None], scores, masked)
        return masked
