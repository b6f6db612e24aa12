// Compressed trie over the token sequences of a catalog: the index that constrained beam
// search walks.
//
// Layout: level-ordered (BFS) nodes with implicit children, plus path compression.
//  - Level order puts the children of node n at the contiguous node ids
//    [child_offsets[n], child_offsets[n+1]), sorted by token. No child pointers are stored,
//    a beam's allowed tokens are one contiguous slice of `node_tokens` (coalesced reads on a
//    GPU), and `advance` is a binary search in that slice.
//  - Path compression: a node exists only where sequences branch or end. The edge into
//    node n carries its first token in node_tokens[n] and the rest in
//    tail_tokens[tail_offsets[n] .. tail_offsets[n+1]). Titles become unique a few tokens
//    in, so most of a title is one edge: a 1M-item title catalog has ~1.9M nodes instead of
//    ~13M, and the forced continuation of a beam is a slice of tail_tokens.
//  - Items: sorting the sequences lexicographically numbers the items so that every
//    subtree holds a contiguous range of "slots" [item_lo[n], item_hi[n]); item_ids[slot]
//    is the caller's item id. The items whose sequence ends exactly at n sort first in
//    that range (a prefix sorts before its extensions), so no per-node terminal array is
//    needed. Duplicate sequences share a terminal; a sequence that is a prefix of another
//    ends at an inner node.
//
// A beam's position is a State (64 bits): the node whose incoming edge it is on, and how
// many tokens of that edge it has consumed. It is *at* node n once the whole edge is
// consumed. The root is state 0; a token that leaves the trie gives kInvalidState.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace rere {

using State = int64_t;
constexpr State kInvalidState = -1;

inline State make_state(int64_t node, int64_t consumed) { return (node << 32) | consumed; }
inline int64_t state_node(State s) { return s >> 32; }
inline int64_t state_consumed(State s) { return s & 0xffffffffLL; }

// A read-only view of one array; the storage belongs to the Trie (vectors or a mapped file).
// A file could not be opened, mapped or written (OSError in Python). Bad content is
// std::invalid_argument (ValueError).
struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class T>
struct Span {
  const T* ptr = nullptr;
  int64_t size = 0;
  const T& operator[](int64_t i) const { return ptr[i]; }
};

struct TrieArrays {
  Span<int32_t> child_offsets;  // [nodes + 1]
  Span<int32_t> node_tokens;    // [nodes]; first token of the edge into each node (-1: root)
  Span<int32_t> tail_offsets;   // [nodes + 1]
  Span<int32_t> tail_tokens;    // [tail]; the rest of each edge
  Span<int32_t> item_lo;        // [nodes]; first item slot below the node
  Span<int32_t> item_hi;        // [nodes]; one past the last
  Span<int64_t> item_ids;       // [items]; the caller's item id of each slot
};

struct TrieStats {
  int64_t items = 0, nodes = 0, edges = 0, tail_tokens = 0, bytes = 0;
  int64_t max_depth = 0;
  std::vector<int64_t> max_fanout_per_depth;  // index = depth in tokens; depth 0 = the root
};

class Trie {
 public:
  // Builds from `n_items` sequences: item i is tokens[offsets[i] .. offsets[i+1]).
  // Throws std::invalid_argument naming the item for bad input.
  static std::shared_ptr<Trie> build(const int64_t* tokens, int64_t n_tokens, const int64_t* offsets,
                                     int64_t n_offsets, const int64_t* item_ids, int64_t n_item_ids,
                                     int64_t vocab_size);
  // Maps the file (copy-on-write, nothing is read up front) and checks every invariant the
  // queries rely on, so that a corrupt file raises instead of crashing.
  static std::shared_ptr<Trie> load(const std::string& path);
  // Writes one file atomically (temporary file, then rename) with `metadata` (JSON text).
  void save(const std::string& path, const std::string& metadata) const;

  // Batch queries over R beams. `allowed_counts` writes R+1 CSR offsets and returns the
  // total; `allowed_fill` then writes the tokens (and next states, if not null).
  int64_t allowed_counts(const State* states, int64_t n, int64_t* offsets) const;
  void allowed_fill(const State* states, int64_t n, const int64_t* offsets, int32_t* tokens,
                    State* next_states) const;
  void advance(const State* states, const int64_t* tokens, int64_t n, State* out) const;
  int64_t items_counts(const State* states, int64_t n, int64_t* offsets) const;
  void items_fill(const State* states, int64_t n, const int64_t* offsets, int64_t* items) const;

  TrieStats stats() const;
  const TrieArrays& arrays() const { return a_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t num_nodes() const { return a_.node_tokens.size; }
  const std::string& metadata() const { return metadata_; }

  // Tokens on the edge into `node` (0 for the root).
  int64_t edge_length(int64_t node) const {
    return node == 0 ? 0 : 1 + a_.tail_offsets[node + 1] - a_.tail_offsets[node];
  }

 private:
  // Throws std::invalid_argument naming beam `row` if `s` is not a state of this trie.
  void check_state(State s, int64_t row) const;
  // Slots [lo, hi) of the items whose sequence ends exactly at `node`.
  void terminal_slots(int64_t node, int64_t* lo, int64_t* hi) const;
  void validate() const;

  TrieArrays a_;
  std::shared_ptr<const void> storage_;  // owns the memory behind a_
  int64_t vocab_size_ = 0;
  std::string metadata_;
};

}  // namespace rere
