"""A key/value cache for beam search that never copies what it need not copy.

Hugging Face's DynamicCache concatenates every new token onto every layer's keys and
values (a full copy per step) and reorders beams with `index_select` (another full copy).
`BeamKVCache` preallocates each layer for the prompt plus the longest completion, writes
new tokens in place, hands attention a view of the filled part, and on a reorder copies
only the rows whose parent is another row, and of those only the generated positions:
the beams of a prompt share its prompt positions, which `expand` copied once (SmolLM2,
2 x 16 beams, ~500-token prompts: copying whole rows cost ~60 ms a step on the 2-core CPU).
Prompts are prefilled once per prompt and the rows then expanded to the beams, instead of
prefilling every beam.
"""
from __future__ import annotations

import contextlib
import copy
import inspect

import torch
from transformers.cache_utils import Cache, DynamicLayer

from rere.sampler import shared_prompt_attention


class _PreallocatedLayer(DynamicLayer):
    """One layer's keys/values `[rows, heads, capacity, dim]`, filled up to `length`.

    After `expand(share_prompt=True)` the prompt part stays one row per prompt
    (`prompt_keys`/`prompt_values`) and the buffers hold only the generated tokens of each
    row; `update` then returns those, for `shared_prompt_attention`.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0  # tokens in the buffers
        self.prompt_length = 0  # tokens kept apart in prompt_keys/prompt_values (shared mode)
        self.shared = 0  # positions [0, shared) of the buffers are equal in every row of a prompt

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, heads, _, dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.key_buffer = key_states.new_empty((rows, heads, self.capacity, dim))
        self.value_buffer = value_states.new_empty((rows, heads, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self.length + new > self.key_buffer.shape[2]:
            raise RuntimeError(f"BeamKVCache is full: {self.length} + {new} tokens > capacity {self.key_buffer.shape[2]}")
        self.key_buffer[:, :, self.length:self.length + new] = key_states
        self.value_buffer[:, :, self.length:self.length + new] = value_states
        self.length += new
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.prompt_length + self.length

    def expand(self, repeats: int, share_prompt: bool) -> None:
        if share_prompt:
            self.prompt_keys = self.key_buffer[:, :, :self.length]
            self.prompt_values = self.value_buffer[:, :, :self.length]
            self.prompt_length, rest = self.length, self.capacity - self.length
            rows, heads, _, dim = self.key_buffer.shape
            self.key_buffer = self.key_buffer.new_empty((rows * repeats, heads, rest, dim))
            self.value_buffer = self.value_buffer.new_empty((rows * repeats, heads, rest, self.value_buffer.shape[-1]))
            self.length = 0
        else:
            self.shared = self.length
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]

    def keep(self, rows: torch.Tensor, prompts: torch.Tensor) -> None:
        """Keep only these rows (and, shared, these prompts' keys and values)."""
        if self.prompt_length:
            self.prompt_keys, self.prompt_values = self.prompt_keys[prompts], self.prompt_values[prompts]
        self.key_buffer, self.value_buffer = self.key_buffer[rows], self.value_buffer[rows]
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]

    def copy_rows(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Row dst[i] becomes a copy of row src[i], a row of the same prompt (all sources
        are read before any write; the shared prompt positions are equal already)."""
        for buffer in (self.key_buffer, self.value_buffer):
            buffer[dst, :, self.shared:self.length] = buffer[src, :, self.shared:self.length]


class BeamKVCache(Cache):
    """A Cache for `model(..., cache=...)` with in-place growth and cheap reorders."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[_PreallocatedLayer(capacity) for _ in range(num_layers)])
        self.prompt_mask: torch.Tensor | None = None  # [P, L] bool, in shared-prompt mode

    def expand(self, repeats: int, prompt_mask: torch.Tensor | None = None) -> None:
        """Each row becomes `repeats` consecutive rows (prompt -> its beams). With
        `prompt_mask` (`[P, L]`, the prompts' attention mask) the prompt part is shared, not
        copied: decode with `shared_prompt_attention` (`PromptDecoder` does)."""
        self.prompt_mask = None if prompt_mask is None else prompt_mask.bool()
        for layer in self.layers:
            layer.expand(repeats, share_prompt=prompt_mask is not None)

    def shallow_copy(self) -> "BeamKVCache":
        """A cache sharing this one's tensors; `keep_prompts` on it leaves this one intact
        (selecting rows makes new tensors)."""
        other = copy.copy(self)
        other.layers = [copy.copy(layer) for layer in self.layers]
        return other

    def keep_prompts(self, prompts: torch.Tensor, repeats: int) -> None:
        """Keep only the rows of these prompts (indexes into the current prompts, in order;
        each prompt owns `repeats` consecutive rows)."""
        rows = (prompts[:, None] * repeats + torch.arange(repeats, device=prompts.device)).reshape(-1)
        if self.prompt_mask is not None:
            self.prompt_mask = self.prompt_mask[prompts]
        for layer in self.layers:
            layer.keep(rows, prompts)

    def reorder(self, parents: torch.Tensor) -> None:
        """Row r takes the contents of row parents[r], a row of the same prompt (rows
        expanded from one prompt row by `expand`). Rows that keep their own contents
        are not touched; on the CPU only the moved rows are copied, on a GPU all rows are
        gathered (finding the moved rows would cost a host synchronisation)."""
        rows = torch.arange(parents.numel(), device=parents.device)
        if parents.device.type == "cpu":
            moved = (parents != rows).nonzero()[:, 0]
            if moved.numel() == 0:
                return
            dst, src = moved, parents[moved]
        else:
            dst, src = rows, parents
        for layer in self.layers:
            layer.copy_rows(dst, src)


def cache_keyword(model) -> str:
    """The name under which `model`'s forward takes a Cache: transformers 5 renamed
    `past_key_values` to `cache` (the old name warns, and goes in 5.40); 4.x and models
    whose forward says only **kwargs take `past_key_values`. A peft model is asked about
    the model it wraps (its own forward says only **kwargs)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # a forward inspect cannot read (a C extension)
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


class PromptDecoder:
    """Decoding rows that share prefilled prompts: prefill P prompts once, `expand` each to
    R rows, then `step` feeds one token per row and returns the next logits.

    Positions come from the left-padded attention mask (a row's position counts its real
    tokens), so prompts of different lengths decode side by side.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 min_vocab_size: int, share_prompt: bool = True):
        self.model = model
        self.share_prompt = share_prompt
        self.cache_keyword = cache_keyword(model)
        layers = model.config.get_text_config().num_hidden_layers
        self.cache = BeamKVCache(layers, capacity=input_ids.shape[1] + max_new_tokens)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        lengths = attention_mask.long().sum(-1)
        if input_ids.device.type == "cpu" and bool((lengths < input_ids.shape[1]).any()):
            self.prompt_logits = self._prefill_one_by_one(input_ids, lengths, layers)
        else:
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                        use_cache=True, logits_to_keep=1, **{self.cache_keyword: self.cache})
            self.prompt_logits = out.logits[:, -1]  # [P, V]: the next-token logits of each prompt
        if self.prompt_logits.shape[-1] < min_vocab_size:
            raise ValueError(f"the model has {self.prompt_logits.shape[-1]} logits but the index has vocab_size "
                             f"{min_vocab_size}")
        self.mask = attention_mask
        self.next_position = positions[:, -1] + 1

    def _prefill_one_by_one(self, input_ids, lengths, layers):
        """On the CPU, prefilling a padded batch computes the padding too (2 x 16 beams of
        516- and 416-token prompts: ~0.4 s of ~4 s); each prompt alone costs only its tokens.
        Their keys and values go into the batch cache left-padded, as a batched prefill
        would put them (the padding positions stay masked)."""
        width = input_ids.shape[1]
        logits = []
        for p, n in enumerate(lengths.tolist()):
            alone = BeamKVCache(layers, capacity=n)
            out = self.model(input_ids=input_ids[p:p + 1, width - n:], use_cache=True, logits_to_keep=1,
                             **{self.cache_keyword: alone})
            logits.append(out.logits[:, -1])
            for layer, single in zip(self.cache.layers, alone.layers):
                if not layer.is_initialized:  # buffers for all P rows; zeros where padding stays
                    rows = input_ids.shape[0]
                    layer.lazy_initialization(single.key_buffer.expand(rows, -1, -1, -1),
                                              single.value_buffer.expand(rows, -1, -1, -1))
                    layer.key_buffer.zero_()
                    layer.value_buffer.zero_()
                layer.key_buffer[p, :, width - n:width] = single.key_buffer[0, :, :n]
                layer.value_buffer[p, :, width - n:width] = single.value_buffer[0, :, :n]
        for layer in self.cache.layers:
            layer.length = width
            layer.keys, layer.values = layer.key_buffer[:, :, :width], layer.value_buffer[:, :, :width]
        return torch.cat(logits)

    def expand(self, repeats: int) -> None:
        """Each prompt's row becomes `repeats` consecutive rows (its beams or samples)."""
        self.repeats = repeats
        self.cache.expand(repeats, self.mask if self.share_prompt else None)
        self.mask = self.mask.repeat_interleave(repeats, dim=0)
        self.next_position = self.next_position.repeat_interleave(repeats)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; the logits `[rows, V]` of the next token."""
        return self.extend(tokens.reshape(-1, 1))[:, -1]

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed `[rows, m]` tokens (m per row, in one forward); the logits `[rows, m, V]`
        after each of them."""
        m = tokens.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], m)], dim=1)
        positions = self.next_position[:, None] + torch.arange(m, device=tokens.device)
        with shared_prompt_attention.active(self.model, self.cache) if self.share_prompt else contextlib.nullcontext():
            out = self.model(input_ids=tokens, attention_mask=self.mask, position_ids=positions,
                             use_cache=True, **{self.cache_keyword: self.cache})
        self.next_position = self.next_position + m
        return out.logits

    def keep_prompts(self, prompts: torch.Tensor) -> None:
        """Decode only these prompts from now on (indexes into the current prompts, in
        order): a finished prompt's rows leave the model's batch."""
        rows = (prompts[:, None] * self.repeats + torch.arange(self.repeats, device=prompts.device)).reshape(-1)
        self.cache.keep_prompts(prompts, self.repeats)
        self.mask, self.next_position = self.mask[rows], self.next_position[rows]

    def split_off(self, prompts: torch.Tensor) -> "PromptDecoder":
        """A decoder for these prompts alone (copies of their rows), to run apart from the
        others; this one is left as it is."""
        other = copy.copy(self)
        other.cache = self.cache.shallow_copy()
        other.keep_prompts(prompts)
        return other

    def reorder(self, parents: torch.Tensor) -> None:
        """Row r continues from row parents[r] (within the same prompt: masks stay valid)."""
        self.cache.reorder(parents)
