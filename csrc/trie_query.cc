// Batch queries over beam states: allowed next tokens (CSR), advance, items at a state,
// and statistics. These are the CPU path; rere/index/tensors.py is the same walk in torch
// over the exported arrays, for beams that live on a GPU.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "trie.h"

namespace rere {

void Trie::check_state(State s, int64_t row) const {
  if (s == kInvalidState) return;
  const int64_t node = state_node(s), consumed = state_consumed(s);
  const bool ok = s >= 0 && node < num_nodes() && consumed <= edge_length(node) && (node == 0 || consumed >= 1);
  if (!ok)
    throw std::invalid_argument("states[" + std::to_string(row) + "] = " + std::to_string(s) +
                                " is not a state of this index");
}

void Trie::terminal_slots(int64_t node, int64_t* lo, int64_t* hi) const {
  const int32_t first_child = a_.child_offsets[node], end_child = a_.child_offsets[node + 1];
  *lo = a_.item_lo[node];
  *hi = first_child < end_child ? a_.item_lo[first_child] : a_.item_hi[node];
}

int64_t Trie::allowed_counts(const State* states, int64_t n, int64_t* offsets) const {
  offsets[0] = 0;
  for (int64_t r = 0; r < n; ++r) {
    const State s = states[r];
    check_state(s, r);
    int64_t count = 0;
    if (s != kInvalidState) {
      const int64_t node = state_node(s);
      count = state_consumed(s) < edge_length(node) ? 1 : a_.child_offsets[node + 1] - a_.child_offsets[node];
    }
    offsets[r + 1] = offsets[r] + count;
  }
  return offsets[n];
}

void Trie::allowed_fill(const State* states, int64_t n, const int64_t* offsets, int32_t* tokens,
                        State* next_states) const {
  for (int64_t r = 0; r < n; ++r) {
    const State s = states[r];
    if (s == kInvalidState) continue;
    const int64_t node = state_node(s), consumed = state_consumed(s);
    int64_t out = offsets[r];
    if (consumed < edge_length(node)) {  // inside an edge: one forced token
      tokens[out] = a_.tail_tokens[a_.tail_offsets[node] + consumed - 1];
      if (next_states) next_states[out] = s + 1;
      continue;
    }
    for (int32_t child = a_.child_offsets[node]; child < a_.child_offsets[node + 1]; ++child, ++out) {
      tokens[out] = a_.node_tokens[child];
      if (next_states) next_states[out] = make_state(child, 1);
    }
  }
}

void Trie::advance(const State* states, const int64_t* tokens, int64_t n, State* out) const {
  for (int64_t r = 0; r < n; ++r) {
    const State s = states[r];
    check_state(s, r);
    const int64_t t = tokens[r];
    out[r] = kInvalidState;
    if (s == kInvalidState || t < 0 || t >= vocab_size_) continue;
    const int64_t node = state_node(s), consumed = state_consumed(s);
    if (consumed < edge_length(node)) {
      if (a_.tail_tokens[a_.tail_offsets[node] + consumed - 1] == t) out[r] = s + 1;
      continue;
    }
    const int32_t* first = a_.node_tokens.ptr + a_.child_offsets[node];
    const int32_t* last = a_.node_tokens.ptr + a_.child_offsets[node + 1];
    const int32_t* hit = std::lower_bound(first, last, static_cast<int32_t>(t));
    if (hit != last && *hit == t) out[r] = make_state(hit - a_.node_tokens.ptr, 1);
  }
}

int64_t Trie::items_counts(const State* states, int64_t n, int64_t* offsets) const {
  offsets[0] = 0;
  for (int64_t r = 0; r < n; ++r) {
    const State s = states[r];
    check_state(s, r);
    int64_t lo = 0, hi = 0;
    if (s != kInvalidState && state_consumed(s) == edge_length(state_node(s))) terminal_slots(state_node(s), &lo, &hi);
    offsets[r + 1] = offsets[r] + (hi - lo);
  }
  return offsets[n];
}

void Trie::items_fill(const State* states, int64_t n, const int64_t* offsets, int64_t* items) const {
  for (int64_t r = 0; r < n; ++r) {
    if (offsets[r + 1] == offsets[r]) continue;
    int64_t lo = 0, hi = 0;
    terminal_slots(state_node(states[r]), &lo, &hi);
    std::copy(a_.item_ids.ptr + lo, a_.item_ids.ptr + hi, items + offsets[r]);
  }
}

TrieStats Trie::stats() const {
  TrieStats st;
  st.items = a_.item_ids.size;
  st.nodes = num_nodes();
  st.edges = st.nodes - 1;
  st.tail_tokens = a_.tail_tokens.size;
  st.bytes = 4 * (a_.child_offsets.size + a_.node_tokens.size + a_.tail_offsets.size + a_.tail_tokens.size +
                  a_.item_lo.size + a_.item_hi.size) +
             8 * a_.item_ids.size;
  // Children have larger ids than their parent (level order), so one forward pass gives
  // every node's depth. Positions inside an edge have fan-out 1; `inner` marks the depth
  // ranges they cover with a difference array.
  std::vector<int64_t> depth(static_cast<size_t>(st.nodes), 0);
  for (int64_t n = 0; n < st.nodes; ++n)
    for (int32_t c = a_.child_offsets[n]; c < a_.child_offsets[n + 1]; ++c) {
      depth[static_cast<size_t>(c)] = depth[static_cast<size_t>(n)] + edge_length(c);
      st.max_depth = std::max(st.max_depth, depth[static_cast<size_t>(c)]);
    }
  st.max_fanout_per_depth.assign(static_cast<size_t>(st.max_depth) + 1, 0);
  std::vector<int64_t> inner(static_cast<size_t>(st.max_depth) + 2, 0);
  for (int64_t n = 0; n < st.nodes; ++n) {
    int64_t& best = st.max_fanout_per_depth[static_cast<size_t>(depth[static_cast<size_t>(n)])];
    best = std::max<int64_t>(best, a_.child_offsets[n + 1] - a_.child_offsets[n]);
    if (n > 0 && edge_length(n) > 1) {  // positions depth-len+1 .. depth-1 lie inside the edge
      ++inner[static_cast<size_t>(depth[static_cast<size_t>(n)] - edge_length(n) + 1)];
      --inner[static_cast<size_t>(depth[static_cast<size_t>(n)])];
    }
  }
  int64_t covering = 0;
  for (size_t d = 0; d < st.max_fanout_per_depth.size(); ++d) {
    covering += inner[d];
    if (covering > 0) st.max_fanout_per_depth[d] = std::max<int64_t>(st.max_fanout_per_depth[d], 1);
  }
  return st;
}

}  // namespace rere
