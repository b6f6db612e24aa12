"""A key/value cache for beam search that never copies what it need not copy.

Hugging Face's DynamicCache concatenates every new token onto every layer's keys and
values (a full copy per step) and reorders beams with `index_select` (another full copy).
`BeamKVCache` preallocates each layer for the prompt plus the longest completion, writes
new tokens in place, hands attention a view of the filled part, and on a reorder copies
only the rows whose parent is another row. Prompts are prefilled once per prompt and the
rows are then expanded to the beams (`expand`), instead of prefilling every beam.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class _PreallocatedLayer(DynamicLayer):
    """One layer's keys/values `[rows, heads, capacity, dim]`, filled up to `length`."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

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
        if self.length + new > self.capacity:
            raise RuntimeError(f"BeamKVCache is full: {self.length} + {new} tokens > capacity {self.capacity}")
        self.key_buffer[:, :, self.length:self.length + new] = key_states
        self.value_buffer[:, :, self.length:self.length + new] = value_states
        self.length += new
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def expand(self, repeats: int) -> None:
        self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
        self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]

    def copy_rows(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Row dst[i] becomes a copy of row src[i] (all sources read before any write)."""
        for buffer in (self.key_buffer, self.value_buffer):
            buffer[dst, :, :self.length] = buffer[src, :, :self.length]


class BeamKVCache(Cache):
    """A Cache for `model(..., past_key_values=cache)` with in-place growth and cheap reorders."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[_PreallocatedLayer(capacity) for _ in range(num_layers)])

    def expand(self, repeats: int) -> None:
        """Each row becomes `repeats` consecutive rows (prompt -> its beams)."""
        for layer in self.layers:
            layer.expand(repeats)

    def reorder(self, parents: torch.Tensor) -> None:
        """Row r takes the contents of row parents[r]. Rows that keep their own contents
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


class PromptDecoder:
    """Decoding rows that share prefilled prompts: prefill P prompts once, `expand` each to
    R rows, then `step` feeds one token per row and returns the next logits.

    Positions come from the left-padded attention mask (a row's position counts its real
    tokens), so prompts of different lengths decode side by side.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 min_vocab_size: int):
        self.model = model
        self.cache = BeamKVCache(model.config.get_text_config().num_hidden_layers,
                                 capacity=input_ids.shape[1] + max_new_tokens)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        if out.logits.shape[-1] < min_vocab_size:
            raise ValueError(f"the model has {out.logits.shape[-1]} logits but the index has vocab_size {min_vocab_size}")
        self.prompt_logits = out.logits[:, -1]  # [P, V]: the next-token logits of each prompt
        self.mask = attention_mask
        self.next_position = positions[:, -1] + 1

    def expand(self, repeats: int) -> None:
        """Each prompt's row becomes `repeats` consecutive rows (its beams or samples)."""
        self.cache.expand(repeats)
        self.mask = self.mask.repeat_interleave(repeats, dim=0)
        self.next_position = self.next_position.repeat_interleave(repeats)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; the logits `[rows, V]` of the next token."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(input_ids=tokens.reshape(-1, 1), attention_mask=self.mask,
                         position_ids=self.next_position[:, None], past_key_values=self.cache, use_cache=True)
        self.next_position += 1
        return out.logits[:, -1]

    def reorder(self, parents: torch.Tensor) -> None:
        """Row r continues from row parents[r] (within the same prompt: masks stay valid)."""
        self.cache.reorder(parents)
