"""The trie as torch tensors on any device, and the batch queries as torch ops.

This is the same walk as the C++ queries (csrc/trie_query.cc), written with vectorised
torch ops (no Python loop over beams) so that beams living on a GPU are stepped there. It
is also the reference the Triton kernels in `rere.kernels` are tested against.

A state is an int64 `node << 32 | consumed` (see csrc/trie.h); the root is 0 and a token
that leaves the trie gives -1.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

ROOT_STATE = 0
INVALID_STATE = -1
_CONSUMED_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class TrieTensors:
    """The index's flat arrays (csrc/trie.h explains each) on one device."""

    child_offsets: torch.Tensor  # int32 [nodes + 1]
    node_tokens: torch.Tensor  # int32 [nodes]
    tail_offsets: torch.Tensor  # int32 [nodes + 1]
    tail_tokens: torch.Tensor  # int32 [tail]
    item_lo: torch.Tensor  # int32 [nodes]
    item_hi: torch.Tensor  # int32 [nodes]
    item_ids: torch.Tensor  # int64 [items]
    max_children: int  # largest fan-out: bounds the binary search in `advance`
    native: object = None  # the C++ trie, on the CPU only: `allowed` asks it directly (~10x faster)

    @property
    def device(self) -> torch.device:
        return self.node_tokens.device

    @property
    def num_nodes(self) -> int:
        return self.node_tokens.numel()

    def to(self, device: torch.device | str) -> "TrieTensors":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        if torch.device(device).type != "cpu":
            moved["native"] = None
        return TrieTensors(**moved)


@dataclass(frozen=True)
class _Decoded:
    valid: torch.Tensor  # bool: not INVALID_STATE
    node: torch.Tensor  # int64 (0 where invalid)
    consumed: torch.Tensor  # int64
    edge_length: torch.Tensor  # int64
    first_child: torch.Tensor  # int64
    num_children: torch.Tensor  # int64

    @property
    def inside_edge(self) -> torch.Tensor:
        return self.valid & (self.consumed < self.edge_length)

    @property
    def at_node(self) -> torch.Tensor:
        return self.valid & (self.consumed == self.edge_length)


def _decode(t: TrieTensors, states: torch.Tensor, check: bool) -> _Decoded:
    states = states.to(device=t.device, dtype=torch.int64)
    node = states >> 32
    consumed = states & _CONSUMED_MASK
    valid = states != INVALID_STATE
    if check:
        in_range = (states >= 0) & (node < t.num_nodes)
        bad = valid & ~in_range
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"states[{row}] = {int(states[row])} is not a state of this index")
    node = torch.where(valid, node, 0).clamp_(0, t.num_nodes - 1)
    tail_count = (t.tail_offsets[node + 1] - t.tail_offsets[node]).long()
    edge_length = torch.where(node == 0, 0, 1 + tail_count)
    if check:
        bad = valid & ((consumed > edge_length) | ((node > 0) & (consumed < 1)))
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"states[{row}] = {int(states[row])} is not a state of this index")
    first_child = t.child_offsets[node].long()
    num_children = t.child_offsets[node + 1].long() - first_child
    return _Decoded(valid, node, consumed, edge_length, first_child, num_children)


def _forced_tokens(t: TrieTensors, d: _Decoded) -> torch.Tensor:
    """The single allowed token of each state inside an edge (garbage elsewhere)."""
    if t.tail_tokens.numel() == 0:  # every edge is one token long
        return torch.zeros_like(d.node)
    pos = (t.tail_offsets[d.node].long() + d.consumed - 1).clamp_(0, t.tail_tokens.numel() - 1)
    return t.tail_tokens[pos].long()


def _expand(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR offsets for `counts`, and for every output entry its row and rank in the row."""
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    total = int(offsets[-1])  # the output size: a CSR result needs it on the host
    rows = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=total)
    rank = torch.arange(total, device=counts.device) - offsets[rows]
    return offsets, rows, rank


def allowed(t: TrieTensors, states: torch.Tensor, with_next_states: bool = False, check: bool = True):
    """Allowed next tokens of every state as CSR: (offsets [R+1], tokens [total] int32,
    next_states [total] or None). An invalid state allows nothing."""
    if t.native is not None and states.device.type == "cpu":
        offsets, tokens, nxt = t.native.allowed(states.to(torch.int64).contiguous().numpy(), with_next_states)
        return torch.from_numpy(offsets), torch.from_numpy(tokens), None if nxt is None else torch.from_numpy(nxt)
    d = _decode(t, states, check)
    inside = d.inside_edge
    counts = torch.where(inside, 1, torch.where(d.valid, d.num_children, 0))
    offsets, rows, rank = _expand(counts)
    child = (d.first_child[rows] + rank).clamp_(max=t.num_nodes - 1)
    inside_rows = inside[rows]
    tokens = torch.where(inside_rows, _forced_tokens(t, d)[rows], t.node_tokens[child].long()).to(torch.int32)
    next_states = None
    if with_next_states:
        state_rows = states.to(device=t.device, dtype=torch.int64)[rows]
        next_states = torch.where(inside_rows, state_rows + 1, (child << 32) | 1)
    return offsets, tokens, next_states


def advance(t: TrieTensors, states: torch.Tensor, tokens: torch.Tensor, check: bool = True) -> torch.Tensor:
    """The state after each beam takes its token; INVALID_STATE if the token leaves the trie."""
    d = _decode(t, states, check)
    states = states.to(device=t.device, dtype=torch.int64)
    tokens = tokens.to(device=t.device, dtype=torch.int64)
    # Binary search for the token among each node's children (sorted by token).
    lo, hi = d.first_child, d.first_child + d.num_children
    end = hi
    for _ in range(max(1, t.max_children).bit_length()):
        active = lo < hi
        mid = (lo + hi) // 2
        go_right = active & (t.node_tokens[mid.clamp(max=t.num_nodes - 1)].long() < tokens)
        lo = torch.where(go_right, mid + 1, lo)
        hi = torch.where(active & ~go_right, mid, hi)
    found = (lo < end) & (t.node_tokens[lo.clamp(max=t.num_nodes - 1)].long() == tokens)
    child_state = torch.where(found & d.at_node, (lo << 32) | 1, INVALID_STATE)
    forced_ok = d.inside_edge & (_forced_tokens(t, d) == tokens)
    return torch.where(forced_ok, states + 1, child_state)


def forced_lengths(t: TrieTensors, states: torch.Tensor) -> torch.Tensor:
    """How many tokens remain of each state's sequence where only one sequence continues it
    (the state is inside the edge into a leaf: path compression put the rest of a title
    there); 0 where the trie still branches below, at a leaf, or for an invalid state."""
    return _forced_lengths(_decode(t, states, check=False))


def _forced_lengths(d: _Decoded) -> torch.Tensor:
    return torch.where(d.inside_edge & (d.num_children == 0), d.edge_length - d.consumed, 0)


def forced_tokens(t: TrieTensors, states: torch.Tensor, width: int) -> torch.Tensor:
    """`[R, width]` int64: the next `width` tokens of each state's forced continuation (see
    `forced_lengths`), -1 past its end and for states that are not forced."""
    d = _decode(t, states, check=False)
    lengths = _forced_lengths(d)
    steps = torch.arange(width, device=t.device)
    inside = steps < lengths[:, None]
    if t.tail_tokens.numel() == 0:
        return torch.full(inside.shape, -1, dtype=torch.int64, device=t.device)
    pos = t.tail_offsets[d.node].long()[:, None] + d.consumed[:, None] - 1 + steps
    tokens = t.tail_tokens[pos.clamp_(0, t.tail_tokens.numel() - 1)].long()
    return torch.where(inside, tokens, -1)


def items_at(t: TrieTensors, states: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Item ids whose sequence ends exactly at each state, as CSR (offsets, item_ids)."""
    d = _decode(t, states, check)
    lo = t.item_lo[d.node].long()
    first_child = d.first_child.clamp(max=t.num_nodes - 1)
    hi = torch.where(d.num_children > 0, t.item_lo[first_child].long(), t.item_hi[d.node].long())
    counts = torch.where(d.at_node, hi - lo, 0)
    offsets, rows, rank = _expand(counts)
    return offsets, t.item_ids[lo[rows] + rank]
