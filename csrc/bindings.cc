// pybind11 face of the trie: numpy arrays in and out, the GIL released around all work.
// The Python class rere.index.CatalogIndex wraps this module; nothing here knows torch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "trie.h"

namespace py = pybind11;
using rere::State;
using rere::Trie;

namespace {

template <class T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
const T* data_1d(const CArray<T>& a, const char* name) {
  if (a.ndim() != 1) throw std::invalid_argument(std::string(name) + " must be one-dimensional");
  return a.data();
}

// A numpy view of one of the trie's arrays; it keeps the trie (and its mapping) alive.
template <class T>
py::array view(const std::shared_ptr<Trie>& trie, rere::Span<T> span) {
  py::array out(py::dtype::of<T>(), {span.size}, {static_cast<py::ssize_t>(sizeof(T))}, span.ptr, py::cast(trie));
  out.attr("setflags")(py::arg("write") = false);  // the index is shared: read-only views
  return out;
}

// Python lists (or tuples) of ints -> one flat int64 token array and its n + 1 offsets, in
// one pass over the tokens: numpy made an array of each of a catalog's 1M lists first, and
// that conversion took 0.5 s more than the build itself (0.77 s). A sequence that is not a
// list or tuple raises TypeError (the caller converts such items with numpy instead).
py::tuple flatten_sequences(const py::list& seqs) {
  const size_t n = seqs.size();
  py::array_t<int64_t> offsets(static_cast<py::ssize_t>(n + 1));
  int64_t* off = offsets.mutable_data();
  off[0] = 0;
  for (size_t i = 0; i < n; ++i) {
    PyObject* seq = PyList_GET_ITEM(seqs.ptr(), static_cast<Py_ssize_t>(i));
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
      throw py::type_error("item " + std::to_string(i) + " is not a list or tuple");
    }
    off[i + 1] = off[i] + static_cast<int64_t>(PySequence_Fast_GET_SIZE(seq));
  }
  py::array_t<int64_t> tokens(static_cast<py::ssize_t>(off[n]));
  int64_t* out = tokens.mutable_data();
  for (size_t i = 0; i < n; ++i) {
    // A token's __index__ may run Python code that changes the lists: hold references and
    // re-check the sizes, so that nothing is read or written out of bounds.
    if (static_cast<size_t>(PyList_GET_SIZE(seqs.ptr())) != n) {
      throw py::value_error("the list of items changed while it was being read");
    }
    const py::object seq = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(seqs.ptr(), static_cast<Py_ssize_t>(i)));
    const Py_ssize_t length = static_cast<Py_ssize_t>(off[i + 1] - off[i]);
    for (Py_ssize_t j = 0; j < length; ++j) {
      if (PySequence_Fast_GET_SIZE(seq.ptr()) != length) {
        throw py::value_error("item " + std::to_string(i) + " changed while it was being read");
      }
      const py::object token = py::reinterpret_borrow<py::object>(PySequence_Fast_ITEMS(seq.ptr())[j]);
      const long long value = PyLong_AsLongLong(token.ptr());
      if (value == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        throw py::value_error("item " + std::to_string(i) + ": token " + std::string(py::repr(token)) +
                              " at position " + std::to_string(j) + " is not an int64 integer");
      }
      out[off[i] + j] = static_cast<int64_t>(value);
    }
  }
  return py::make_tuple(tokens, offsets);
}

}  // namespace

PYBIND11_MODULE(_trie, m) {
  m.doc() = "C++ compressed-trie catalog index (see csrc/trie.h for the layout)";
  m.attr("INVALID_STATE") = rere::kInvalidState;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const rere::IoError& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    }
  });

  m.def("flatten_sequences", &flatten_sequences, py::arg("seqs"),
        "lists or tuples of ints -> (int64 tokens, int64 offsets), one pass over the tokens");

  py::class_<Trie, std::shared_ptr<Trie>>(m, "Trie")
      .def_static(
          "build",
          [](const CArray<int64_t>& tokens, const CArray<int64_t>& offsets, const CArray<int64_t>& item_ids,
             int64_t vocab_size) {
            const int64_t* t = data_1d(tokens, "tokens");
            const int64_t* o = data_1d(offsets, "offsets");
            const int64_t* ids = data_1d(item_ids, "item_ids");
            py::gil_scoped_release release;
            return Trie::build(t, tokens.size(), o, offsets.size(), ids, item_ids.size(), vocab_size);
          },
          py::arg("tokens"), py::arg("offsets"), py::arg("item_ids"), py::arg("vocab_size"))
      .def_static(
          "load",
          [](const std::string& path) {
            py::gil_scoped_release release;
            return Trie::load(path);
          },
          py::arg("path"))
      .def(
          "save",
          [](const Trie& self, const std::string& path, const std::string& metadata) {
            py::gil_scoped_release release;
            self.save(path, metadata);
          },
          py::arg("path"), py::arg("metadata") = "{}")
      .def(
          "allowed",
          [](const Trie& self, const CArray<int64_t>& states, bool with_next_states) {
            const State* s = data_1d(states, "states");
            const int64_t n = states.size();
            py::array_t<int64_t> offsets(n + 1);
            int64_t total = 0;
            {
              py::gil_scoped_release release;
              total = self.allowed_counts(s, n, offsets.mutable_data());
            }
            py::array_t<int32_t> tokens(total);
            py::object next = py::none();
            State* next_ptr = nullptr;
            if (with_next_states) {
              py::array_t<int64_t> next_arr(total);
              next_ptr = next_arr.mutable_data();
              next = next_arr;
            }
            int32_t* tok_ptr = tokens.mutable_data();
            const int64_t* off_ptr = offsets.data();
            {
              py::gil_scoped_release release;
              self.allowed_fill(s, n, off_ptr, tok_ptr, next_ptr);
            }
            return py::make_tuple(offsets, tokens, next);
          },
          py::arg("states"), py::arg("with_next_states") = false)
      .def(
          "advance",
          [](const Trie& self, const CArray<int64_t>& states, const CArray<int64_t>& tokens) {
            if (states.size() != tokens.size())
              throw std::invalid_argument("states and tokens differ in length: " + std::to_string(states.size()) +
                                          " vs " + std::to_string(tokens.size()));
            const State* s = data_1d(states, "states");
            const int64_t* t = data_1d(tokens, "tokens");
            py::array_t<int64_t> out(states.size());
            State* o = out.mutable_data();
            py::gil_scoped_release release;
            self.advance(s, t, states.size(), o);
            return out;
          },
          py::arg("states"), py::arg("tokens"))
      .def(
          "items_at",
          [](const Trie& self, const CArray<int64_t>& states) {
            const State* s = data_1d(states, "states");
            const int64_t n = states.size();
            py::array_t<int64_t> offsets(n + 1);
            int64_t total = 0;
            {
              py::gil_scoped_release release;
              total = self.items_counts(s, n, offsets.mutable_data());
            }
            py::array_t<int64_t> items(total);
            int64_t* item_ptr = items.mutable_data();
            const int64_t* off_ptr = offsets.data();
            {
              py::gil_scoped_release release;
              self.items_fill(s, n, off_ptr, item_ptr);
            }
            return py::make_tuple(offsets, items);
          },
          py::arg("states"))
      .def("arrays",
           [](const std::shared_ptr<Trie>& self) {
             const rere::TrieArrays& a = self->arrays();
             py::dict out;
             out["child_offsets"] = view(self, a.child_offsets);
             out["node_tokens"] = view(self, a.node_tokens);
             out["tail_offsets"] = view(self, a.tail_offsets);
             out["tail_tokens"] = view(self, a.tail_tokens);
             out["item_lo"] = view(self, a.item_lo);
             out["item_hi"] = view(self, a.item_hi);
             out["item_ids"] = view(self, a.item_ids);
             return out;
           })
      .def("stats",
           [](const Trie& self) {
             const rere::TrieStats st = self.stats();
             py::dict out;
             out["items"] = st.items;
             out["nodes"] = st.nodes;
             out["edges"] = st.edges;
             out["tail_tokens"] = st.tail_tokens;
             out["bytes"] = st.bytes;
             out["max_depth"] = st.max_depth;
             out["max_fanout_per_depth"] = st.max_fanout_per_depth;
             return out;
           })
      .def_property_readonly("vocab_size", &Trie::vocab_size)
      .def_property_readonly("num_nodes", &Trie::num_nodes)
      .def_property_readonly("num_items", [](const Trie& self) { return self.arrays().item_ids.size; })
      .def_property_readonly("metadata", &Trie::metadata);
}
