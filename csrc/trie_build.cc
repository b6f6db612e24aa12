// Building the compressed trie: sort the sequences, take the longest common prefix (LCP) of
// each neighbour pair, and read the compressed trie off the sorted order with a stack (the
// same walk that builds a suffix tree from a suffix array and its LCP array). Linear after
// the sort, with no per-node hash maps (benchmarks/RESULTS.md has the build times).
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "trie.h"

namespace rere {
namespace {

struct OwnedArrays {
  std::vector<int32_t> child_offsets, node_tokens, tail_offsets, tail_tokens, item_lo, item_hi;
  std::vector<int64_t> item_ids;
};

template <class T>
Span<T> span_of(const std::vector<T>& v) {
  return Span<T>{v.data(), static_cast<int64_t>(v.size())};
}

constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

class Builder {
 public:
  Builder(const int64_t* tokens, int64_t n_tokens, const int64_t* offsets, int64_t n_items,
          const int64_t* item_ids, int64_t vocab_size)
      : tokens_(tokens), n_tokens_(n_tokens), offsets_(offsets), n_items_(n_items),
        item_ids_(item_ids), vocab_size_(vocab_size) {}

  std::shared_ptr<OwnedArrays> run() {
    validate_input();
    sort_sequences();
    build_tree();
    return emit_level_order();
  }

 private:
  std::string item_name(int64_t i) const {
    return "item " + std::to_string(i) + " (id " + std::to_string(item_ids_[i]) + ")";
  }
  int64_t length(int64_t seq) const { return offsets_[seq + 1] - offsets_[seq]; }
  int32_t token(int64_t seq, int64_t pos) const { return static_cast<int32_t>(tokens_[offsets_[seq] + pos]); }

  void validate_input() const {
    if (n_items_ <= 0) throw std::invalid_argument("empty catalog: there are no sequences to index");
    if (vocab_size_ <= 0 || vocab_size_ > kMaxInt32)
      throw std::invalid_argument("vocab_size must be in [1, 2^31), got " + std::to_string(vocab_size_));
    if (n_tokens_ >= kMaxInt32 || n_items_ >= (kMaxInt32 >> 1))
      throw std::invalid_argument("catalog too large for a 32-bit index: " + std::to_string(n_items_) +
                                  " items, " + std::to_string(n_tokens_) + " tokens");
    if (offsets_[0] != 0)
      throw std::invalid_argument("offsets[0] must be 0, got " + std::to_string(offsets_[0]));
    for (int64_t i = 0; i < n_items_; ++i) {
      if (item_ids_[i] < 0)
        throw std::invalid_argument("item " + std::to_string(i) + " has a negative id (" +
                                    std::to_string(item_ids_[i]) + ")");
      if (offsets_[i + 1] < offsets_[i] || offsets_[i + 1] > n_tokens_)
        throw std::invalid_argument("offsets are not increasing within [0, " + std::to_string(n_tokens_) +
                                    "] at " + item_name(i) + ": offsets[" + std::to_string(i) + "] = " +
                                    std::to_string(offsets_[i]) + ", offsets[" + std::to_string(i + 1) +
                                    "] = " + std::to_string(offsets_[i + 1]));
      if (length(i) == 0) throw std::invalid_argument(item_name(i) + " has an empty token sequence");
      for (int64_t p = 0; p < length(i); ++p) {
        const int64_t t = tokens_[offsets_[i] + p];
        if (t < 0 || t >= vocab_size_)
          throw std::invalid_argument(item_name(i) + ": token " + std::to_string(t) + " at position " +
                                      std::to_string(p) + " is outside [0, vocab_size=" +
                                      std::to_string(vocab_size_) + ")");
      }
    }
    if (offsets_[n_items_] != n_tokens_)
      throw std::invalid_argument("offsets end at " + std::to_string(offsets_[n_items_]) + " but there are " +
                                  std::to_string(n_tokens_) + " tokens");
  }

  // Lexicographic order (a prefix first; equal sequences in input order). The first two
  // tokens are packed into a 64-bit key so that nearly every comparison is one integer
  // compare on the sort array instead of two random reads of the token array (whole build of
  // 1M title-like items: 1.19 s -> 0.80 s on the 2-core dev machine).
  void sort_sequences() {
    struct Entry {
      uint64_t key;
      int32_t seq;
    };
    std::vector<Entry> entries(static_cast<size_t>(n_items_));
    for (int64_t i = 0; i < n_items_; ++i) {
      const uint64_t first = static_cast<uint64_t>(token(i, 0)) + 1;
      const uint64_t second = length(i) > 1 ? static_cast<uint64_t>(token(i, 1)) + 1 : 0;
      entries[static_cast<size_t>(i)] = Entry{(first << 32) | second, static_cast<int32_t>(i)};
    }
    std::sort(entries.begin(), entries.end(), [this](const Entry& a, const Entry& b) {
      if (a.key != b.key) return a.key < b.key;
      const int64_t la = length(a.seq), lb = length(b.seq), n = std::min(la, lb);
      for (int64_t p = 2; p < n; ++p) {
        const int32_t ta = token(a.seq, p), tb = token(b.seq, p);
        if (ta != tb) return ta < tb;
      }
      if (la != lb) return la < lb;
      return a.seq < b.seq;
    });
    sorted_.resize(entries.size());
    for (size_t k = 0; k < entries.size(); ++k) sorted_[k] = entries[k].seq;
  }

  int32_t common_prefix(int32_t a, int32_t b) const {
    const int64_t n = std::min(length(a), length(b));
    int64_t p = 0;
    while (p < n && token(a, p) == token(b, p)) ++p;
    return static_cast<int32_t>(p);
  }

  int32_t new_node(int32_t parent, int32_t depth, int32_t slot) {
    parent_.push_back(parent);
    depth_.push_back(depth);
    slot_.push_back(slot);
    lo_.push_back(slot);
    hi_.push_back(-1);
    return static_cast<int32_t>(parent_.size() - 1);
  }

  // Nodes exist at depth 0 (root), at every branching depth (the LCP of neighbours) and at
  // every sequence end. `slot_[n]` is a sorted position whose sequence passes through n, so
  // the edge into n is that sequence's tokens [depth(parent), depth(n)).
  void build_tree() {
    const int32_t m = static_cast<int32_t>(n_items_);
    new_node(-1, 0, 0);
    std::vector<int32_t> stack{0};
    for (int32_t k = 0; k < m; ++k) {
      const int32_t lcp = k == 0 ? 0 : common_prefix(sorted_[k - 1], sorted_[k]);
      const int32_t len = static_cast<int32_t>(length(sorted_[k]));
      int32_t last = -1;
      while (depth_[stack.back()] > lcp) {
        last = stack.back();
        stack.pop_back();
        hi_[last] = k;
      }
      if (depth_[stack.back()] < lcp) {  // branch inside the edge into `last`: split it
        const int32_t split = new_node(stack.back(), lcp, slot_[last]);
        lo_[split] = lo_[last];
        parent_[last] = split;
        stack.push_back(split);
      }
      // len == lcp only for a duplicate of the previous sequence: same terminal node.
      if (len > lcp) stack.push_back(new_node(stack.back(), len, k));
    }
    for (int32_t n : stack) hi_[n] = m;
  }

  // Renumbers the nodes in level order with children sorted by token (= by item slot), and
  // copies the edge labels out of the input sequences.
  std::shared_ptr<OwnedArrays> emit_level_order() const {
    const int32_t n_nodes = static_cast<int32_t>(parent_.size());
    std::vector<int32_t> kid_start(static_cast<size_t>(n_nodes) + 1, 0), kids(static_cast<size_t>(n_nodes));
    for (int32_t n = 1; n < n_nodes; ++n) ++kid_start[parent_[n] + 1];
    for (int32_t n = 0; n < n_nodes; ++n) kid_start[n + 1] += kid_start[n];
    std::vector<int32_t> fill(kid_start.begin(), kid_start.end() - 1);
    for (int32_t n = 1; n < n_nodes; ++n) kids[fill[parent_[n]]++] = n;
    for (int32_t n = 0; n < n_nodes; ++n)  // a split node was created after its siblings
      std::sort(kids.begin() + kid_start[n], kids.begin() + kid_start[n + 1],
                [this](int32_t a, int32_t b) { return lo_[a] < lo_[b]; });

    auto out = std::make_shared<OwnedArrays>();
    std::vector<int32_t> order{0};
    order.reserve(static_cast<size_t>(n_nodes));
    out->child_offsets.resize(static_cast<size_t>(n_nodes) + 1);
    for (size_t h = 0; h < order.size(); ++h) {
      const int32_t old = order[h];
      out->child_offsets[h] = static_cast<int32_t>(order.size());
      order.insert(order.end(), kids.begin() + kid_start[old], kids.begin() + kid_start[old + 1]);
    }
    out->child_offsets[static_cast<size_t>(n_nodes)] = n_nodes;

    out->node_tokens.resize(static_cast<size_t>(n_nodes));
    out->tail_offsets.resize(static_cast<size_t>(n_nodes) + 1);
    out->item_lo.resize(static_cast<size_t>(n_nodes));
    out->item_hi.resize(static_cast<size_t>(n_nodes));
    out->tail_tokens.reserve(static_cast<size_t>(n_tokens_));
    out->node_tokens[0] = -1;
    for (int32_t h = 0; h < n_nodes; ++h) {
      const int32_t old = order[static_cast<size_t>(h)];
      out->tail_offsets[static_cast<size_t>(h)] = static_cast<int32_t>(out->tail_tokens.size());
      out->item_lo[static_cast<size_t>(h)] = lo_[old];
      out->item_hi[static_cast<size_t>(h)] = hi_[old];
      if (old == 0) continue;
      const int32_t seq = sorted_[slot_[old]], from = depth_[parent_[old]];
      out->node_tokens[static_cast<size_t>(h)] = token(seq, from);
      for (int32_t p = from + 1; p < depth_[old]; ++p) out->tail_tokens.push_back(token(seq, p));
    }
    out->tail_offsets[static_cast<size_t>(n_nodes)] = static_cast<int32_t>(out->tail_tokens.size());
    out->tail_tokens.shrink_to_fit();
    out->item_ids.resize(static_cast<size_t>(n_items_));
    for (size_t k = 0; k < sorted_.size(); ++k) out->item_ids[k] = item_ids_[sorted_[k]];
    return out;
  }

  const int64_t* tokens_;  // int64 so that no id can wrap into range before it is checked
  int64_t n_tokens_;
  const int64_t* offsets_;
  int64_t n_items_;
  const int64_t* item_ids_;
  int64_t vocab_size_;
  std::vector<int32_t> sorted_;                        // item of each slot
  std::vector<int32_t> parent_, depth_, slot_, lo_, hi_;  // per node, creation order
};

}  // namespace

std::shared_ptr<Trie> Trie::build(const int64_t* tokens, int64_t n_tokens, const int64_t* offsets,
                                  int64_t n_offsets, const int64_t* item_ids, int64_t n_item_ids,
                                  int64_t vocab_size) {
  if (n_offsets < 1) throw std::invalid_argument("offsets must have one entry more than there are items");
  if (n_item_ids != n_offsets - 1)
    throw std::invalid_argument("item_ids has " + std::to_string(n_item_ids) + " entries but offsets describe " +
                                std::to_string(n_offsets - 1) + " sequences");
  std::shared_ptr<OwnedArrays> owned =
      Builder(tokens, n_tokens, offsets, n_offsets - 1, item_ids, vocab_size).run();
  auto trie = std::make_shared<Trie>();
  trie->a_ = TrieArrays{span_of(owned->child_offsets), span_of(owned->node_tokens), span_of(owned->tail_offsets),
                        span_of(owned->tail_tokens),   span_of(owned->item_lo),     span_of(owned->item_hi),
                        span_of(owned->item_ids)};
  trie->storage_ = owned;
  trie->vocab_size_ = vocab_size;
  return trie;
}

}  // namespace rere
