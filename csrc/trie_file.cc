// One-file format: a fixed header, the metadata (JSON text), then the seven arrays, each at
// a 64-byte aligned offset so that a memory map can hand them out as arrays unchanged.
// Loading maps the file copy-on-write and validates it; nothing is copied.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#include <algorithm>
#include <stdexcept>
#include <string>

#include "trie.h"

namespace rere {
namespace {

constexpr char kMagic[8] = {'R', 'E', 'R', 'E', 'T', 'R', 'I', 'E'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kByteOrderMark = 0x01020304;
constexpr int64_t kAlign = 64;
constexpr int kArrays = 7;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t byte_order;
  int64_t vocab_size;
  int64_t metadata_offset, metadata_bytes;
  int64_t array_offset[kArrays];
  int64_t array_count[kArrays];
};

int64_t align_up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

struct MappedFile {
  void* base = nullptr;
  size_t size = 0;
  ~MappedFile() {
    if (base) munmap(base, size);
  }
};

std::string os_error(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

// Element size and view of array `i` in the order the header lists them.
template <class F>
void for_each_array(TrieArrays& a, F&& f) {
  f(a.child_offsets);
  f(a.node_tokens);
  f(a.tail_offsets);
  f(a.tail_tokens);
  f(a.item_lo);
  f(a.item_hi);
  f(a.item_ids);
}

}  // namespace

void Trie::save(const std::string& path, const std::string& metadata) const {
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.byte_order = kByteOrderMark;
  h.vocab_size = vocab_size_;
  h.metadata_offset = static_cast<int64_t>(sizeof(Header));
  h.metadata_bytes = static_cast<int64_t>(metadata.size());
  int64_t cursor = align_up(h.metadata_offset + h.metadata_bytes);
  std::vector<std::pair<const void*, int64_t>> chunks;
  int i = 0;
  TrieArrays a = a_;
  for_each_array(a, [&](auto& span) {
    const int64_t bytes = span.size * static_cast<int64_t>(sizeof(span.ptr[0]));
    h.array_offset[i] = cursor;
    h.array_count[i] = span.size;
    chunks.emplace_back(span.ptr, bytes);
    cursor = align_up(cursor + bytes);
    ++i;
  });

  const std::string tmp = path + ".tmp-" + std::to_string(getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw IoError(os_error("cannot write index file", tmp));
  auto write_at = [&](int64_t offset, const void* data, int64_t bytes) {
    static const char zeros[kAlign] = {};
    long pos = std::ftell(f);
    while (pos >= 0 && pos < offset) {  // padding up to the aligned offset
      const size_t pad = static_cast<size_t>(std::min<int64_t>(offset - pos, kAlign));
      if (std::fwrite(zeros, 1, pad, f) != pad) return false;
      pos += static_cast<long>(pad);
    }
    return bytes == 0 || std::fwrite(data, 1, static_cast<size_t>(bytes), f) == static_cast<size_t>(bytes);
  };
  bool ok = write_at(0, &h, sizeof h) && write_at(h.metadata_offset, metadata.data(), h.metadata_bytes);
  for (int k = 0; ok && k < kArrays; ++k) ok = write_at(h.array_offset[k], chunks[k].first, chunks[k].second);
  ok = ok && write_at(cursor, nullptr, 0);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string message = os_error("cannot write index file", path);
    std::remove(tmp.c_str());
    throw IoError(message);
  }
}

std::shared_ptr<Trie> Trie::load(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw IoError(os_error("cannot open index file", path));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const std::string message = os_error("cannot stat index file", path);
    ::close(fd);
    throw IoError(message);
  }
  auto mapped = std::make_shared<MappedFile>();
  mapped->size = static_cast<size_t>(st.st_size);
  if (mapped->size < sizeof(Header)) {
    ::close(fd);
    throw std::invalid_argument(path + " is not a rere index file (" + std::to_string(st.st_size) + " bytes)");
  }
  // Private mapping: pages are shared with the page cache, and a stray write through a
  // numpy/torch view changes this process's copy, never the file (and never segfaults).
  void* base = mmap(nullptr, mapped->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (base == MAP_FAILED) throw IoError(os_error("cannot map index file", path));
  mapped->base = base;

  Header h{};
  std::memcpy(&h, base, sizeof h);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0)
    throw std::invalid_argument(path + " is not a rere index file (bad magic)");
  if (h.byte_order != kByteOrderMark)
    throw std::invalid_argument(path + " was written on a machine of the other byte order");
  if (h.version != kVersion)
    throw std::invalid_argument(path + " has index format version " + std::to_string(h.version) +
                                ", this rere reads version " + std::to_string(kVersion) + ": rebuild the index");
  const int64_t file_size = static_cast<int64_t>(mapped->size);
  auto in_file = [&](int64_t offset, int64_t bytes) {
    return offset >= 0 && bytes >= 0 && offset <= file_size && bytes <= file_size - offset;
  };
  if (!in_file(h.metadata_offset, h.metadata_bytes))
    throw std::invalid_argument(path + " is truncated or corrupt (metadata out of range)");

  auto trie = std::make_shared<Trie>();
  char* bytes = static_cast<char*>(base);
  int i = 0;
  for_each_array(trie->a_, [&](auto& span) {
    using T = std::remove_const_t<std::remove_reference_t<decltype(span.ptr[0])>>;
    const int64_t offset = h.array_offset[i], count = h.array_count[i];
    if (count < 0 || offset % kAlign != 0 || count > file_size / static_cast<int64_t>(sizeof(T)) ||
        !in_file(offset, count * static_cast<int64_t>(sizeof(T))))
      throw std::invalid_argument(path + " is truncated or corrupt (array " + std::to_string(i) + " out of range)");
    span.ptr = reinterpret_cast<const T*>(bytes + offset);
    span.size = count;
    ++i;
  });
  trie->metadata_.assign(bytes + h.metadata_offset, static_cast<size_t>(h.metadata_bytes));
  trie->vocab_size_ = h.vocab_size;
  trie->storage_ = mapped;
  try {
    trie->validate();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + " is corrupt: " + e.what());
  }
  return trie;
}

// Every invariant a query relies on to stay inside the arrays: O(nodes + tail + items).
void Trie::validate() const {
  const int64_t nodes = a_.node_tokens.size, items = a_.item_ids.size;
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  if (vocab_size_ <= 0 || vocab_size_ > std::numeric_limits<int32_t>::max()) fail("bad vocab_size");
  if (nodes < 1 || a_.child_offsets.size != nodes + 1 || a_.tail_offsets.size != nodes + 1 ||
      a_.item_lo.size != nodes || a_.item_hi.size != nodes)
    fail("array sizes disagree");
  if (nodes < 2 || a_.child_offsets[0] != 1) fail("the root has no children");
  if (a_.child_offsets[nodes] != nodes || a_.node_tokens[0] != -1 || a_.tail_offsets[0] != 0 ||
      a_.tail_offsets[nodes] != a_.tail_tokens.size)
    fail("bad array ends");
  for (int64_t n = 0; n < nodes; ++n) {
    const int32_t c0 = a_.child_offsets[n], c1 = a_.child_offsets[n + 1];
    if (c1 < c0 || (c0 < c1 && c0 <= n)) fail("children of node " + std::to_string(n));
    for (int32_t c = c0; c < c1; ++c) {
      if (c > c0 && a_.node_tokens[c] <= a_.node_tokens[c - 1])
        fail("children of node " + std::to_string(n) + " not sorted");
      if (a_.item_lo[c] < a_.item_lo[n] || a_.item_hi[c] > a_.item_hi[n])
        fail("items of node " + std::to_string(c) + " outside its parent's");
    }
    if (n > 0 && (a_.node_tokens[n] < 0 || a_.node_tokens[n] >= vocab_size_)) fail("token of node " + std::to_string(n));
    if (a_.tail_offsets[n + 1] < a_.tail_offsets[n] || (n == 0 && a_.tail_offsets[1] != 0))
      fail("tail of node " + std::to_string(n));
    if (a_.item_lo[n] < 0 || a_.item_lo[n] > a_.item_hi[n] || a_.item_hi[n] > items)
      fail("items of node " + std::to_string(n));
  }
  for (int64_t k = 0; k < a_.tail_tokens.size; ++k)
    if (a_.tail_tokens[k] < 0 || a_.tail_tokens[k] >= vocab_size_) fail("tail token " + std::to_string(k));
  for (int64_t k = 0; k < items; ++k)
    if (a_.item_ids[k] < 0) fail("item id at slot " + std::to_string(k));
}

}  // namespace rere
