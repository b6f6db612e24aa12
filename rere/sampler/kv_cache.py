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
