"""Ranking metrics for generative recommenders, with the ReRe reference semantics.

Each example is a ranked list of catalog positions (best first) produced by beam search,
and one target item. The reference evaluation (ReRe, after BIGRec and D3) compares the
*generated identifier* with the target's: every item that shares the target's title is a
hit, because such items cannot be told apart once generated. `target_ranks` does exactly
that; `ranking_metrics` turns the ranks into HR@K and NDCG@K (one relevant item, so
NDCG@K = 1 / log2(rank + 2) for a hit at 0-based rank < K, else 0).

Beyond accuracy, `ranking_metrics` also reports what the paper lists as the field's blind
spots: invalid generations (-1 entries), catalog coverage, intra-list diversity, novelty
and popularity of what is recommended, and accuracy split by the target's popularity
(head/tail) and by history length (cold/warm users).

Everything is vectorised with numpy. The ranked lists become one padded int64 matrix and
each item's identifier a group id (one dict pass over the catalog's identifiers, ~0.5 s
for a million titles, cached per catalog); hits are then one array comparison. Diversity
works on the top `diversity_k` slots, in chunks of lists so that memory stays bounded;
title word sets and semantic-ID codes are computed once per catalog (see `_title_words`,
`_title_distances` and `_sid_distances` for the cost). On one busy CPU core, 100k lists
of 50 over a 1M-item catalog take ~0.2 s without diversity and ~1.2 s with diversity@10,
once the per-catalog arrays exist (first call: + ~0.6 s groups, + ~5 s title words).
"""
from __future__ import annotations

import itertools
import math
import string
import weakref
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from rere.catalog import Catalog

KS = (1, 3, 5, 10, 20, 50)

# Title words: lower-cased, ASCII punctuation read as a space, split on whitespace.
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})
# Pairs handled at once by diversity (elements of the [lists, pairs] work arrays): bounds
# the memory of a chunk to a few tens of MB whatever the number of lists.
_PAIR_CHUNK = 1 << 21


# -- ranks -------------------------------------------------------------------------------


def target_ranks(ranked, targets, catalog: Catalog) -> np.ndarray:
    """int64 [n]: 0-based rank of the first hit in each ranked list, -1 if none.

    ranked[i]: catalog positions best first (a sequence of ints, or a 2-D int array; lists
    may have different lengths); -1 entries are invalid generations/empty slots and never
    hit. targets[i]: the target's catalog position. A hit is an item whose IDENTIFIER equals
    the target's (so every item sharing a duplicated title hits, as in the reference
    evaluation).
    """
    matrix, _ = _ranked_matrix(ranked, len(catalog))
    target = _targets(targets, matrix.shape[0], len(catalog))
    return _ranks(matrix, target, identifier_groups(catalog))


def _ranks(matrix: np.ndarray, target: np.ndarray, groups: np.ndarray) -> np.ndarray:
    n, width = matrix.shape
    if width == 0:
        return np.full(n, -1, dtype=np.int64)
    # Group of every slot (-1 for invalid slots and padding; target groups are >= 0).
    slot_groups = np.where(matrix >= 0, groups[np.maximum(matrix, 0)], -1)
    hit = slot_groups == groups[target][:, None]
    first = hit.argmax(axis=1)
    return np.where(hit[np.arange(n), first], first, -1).astype(np.int64)


def identifier_groups(catalog: Catalog) -> np.ndarray:
    """int64 [len(catalog)]: the same id for items with equal identifiers (cached per catalog).

    One dict pass over the identifiers, about 0.3 us an item.
    """
    cache = _cache(catalog)
    if "groups" not in cache:
        cache["groups"] = _dense_ids(catalog.identifiers)[0]
    return cache["groups"]


def _dense_ids(values: Sequence) -> tuple[np.ndarray, dict]:
    """int64 ids of hashable values, equal values getting equal ids 0, 1, ... in first-seen
    order, and the value -> id dict. The loop runs in C (defaultdict + map)."""
    index: defaultdict = defaultdict(itertools.count().__next__)
    ids = np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values))
    return ids, index


# Derived per-catalog arrays, computed once per catalog object and dropped with it (a
# Catalog is frozen, so they never go stale).
_CACHES: dict[int, tuple[weakref.ref, dict]] = {}


def _cache(catalog: Catalog) -> dict:
    key = id(catalog)
    entry = _CACHES.get(key)
    if entry is not None and entry[0]() is catalog:
        return entry[1]
    store: dict = {}
    _CACHES[key] = (weakref.ref(catalog, lambda _, key=key: _CACHES.pop(key, None)), store)
    return store


def _ranked_matrix(ranked, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The ranked lists as an int64 [n, width] matrix padded with -1, and each list's length.

    Entries must be -1 or a catalog position; anything else is a ValueError naming the
    example.
    """
    ranked = _numpy(ranked)
    if isinstance(ranked, np.ndarray) and not (ranked.ndim == 1 and ranked.dtype == object):
        if ranked.ndim != 2:
            raise ValueError(
                f"ranked must be a 2-D array or a sequence of lists, got shape {ranked.shape}"
            )
        if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
            raise ValueError(
                f"ranked must hold integer catalog positions, got dtype {ranked.dtype}"
            )
        matrix = ranked.astype(np.int64, copy=False)
        lengths = np.full(matrix.shape[0], matrix.shape[1], dtype=np.int64)
    else:
        lists = [_numpy(r) for r in ranked]
        lengths = np.fromiter((len(r) for r in lists), dtype=np.int64, count=len(lists))
        if lists and all(isinstance(r, np.ndarray) for r in lists):
            if any(r.ndim != 1 for r in lists):
                raise ValueError("each ranked list must be 1-D")
            flat = np.concatenate(lists)
        else:
            flat = np.array(list(itertools.chain.from_iterable(lists)))
        if flat.size and not np.issubdtype(flat.dtype, np.integer):
            raise ValueError(f"ranked must hold integer catalog positions, got {flat.dtype} values")
        flat = flat.astype(np.int64, copy=False)
        width = int(lengths.max()) if len(lists) else 0
        matrix = np.full((len(lists), width), -1, dtype=np.int64)
        matrix[np.arange(width) < lengths[:, None]] = flat  # row-major, as `flat` is
    if matrix.shape[0] == 0:
        raise ValueError("no examples: ranked is empty")
    bad = (matrix < -1) | (matrix >= n_items)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"example {i}: ranked entry {j} is {matrix[i, j]}, neither -1 (invalid) nor a "
            f"position in a catalog of {n_items} items"
        )
    return matrix, lengths


def _numpy(x):
    """A torch tensor (on any device) as a numpy array; anything else unchanged."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x


def _targets(targets, n: int, n_items: int) -> np.ndarray:
    target = np.asarray(_numpy(targets))
    if target.ndim != 1:
        raise ValueError(f"targets must be one position per example, got shape {target.shape}")
    if len(target) != n:
        raise ValueError(f"{n} ranked lists but {len(target)} targets")
    if target.size and not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"targets must be integer catalog positions, got dtype {target.dtype}")
    target = target.astype(np.int64, copy=False)
    bad = (target < 0) | (target >= n_items)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"example {i}: target position {target[i]} is out of range for a catalog of "
            f"{n_items} items"
        )
    return target


# -- metrics -----------------------------------------------------------------------------


def ranking_metrics(
    ranked,
    targets,
    catalog: Catalog,
    ks: Sequence[int] = KS,
    *,
    train_counts=None,
    history_lengths=None,
    head_share: float = 0.2,
    cold_history: int = 3,
    diversity_k: int = 10,
) -> dict:
    """Accuracy, validity, coverage, diversity and (optionally) popularity metrics.

    Returns a flat-ish dict:
      "examples": n,
      f"HR@{k}", f"NDCG@{k}" for k in ks (NDCG = 1/log2(rank+2) if rank < k else 0),
      "invalid": number of -1 entries, "invalid_rate": that / total slots (the lists'
      lengths summed; every cell of a 2-D array is a slot, so -1 padding counts),
      "examples_with_invalid": examples with at least one -1,
      f"coverage@{k}": fraction of catalog items in at least one top-k list (k in ks),
      f"diversity@{diversity_k}": mean intra-list diversity of the top-k lists, i.e. the
      mean pairwise distance of a list's valid items averaged over the lists with at least
      two of them (nan if none). Two titles are at distance 1 - Jaccard of their sets of
      lower-cased words (split on whitespace, ASCII punctuation counting as a space; two
      titles without any word are at distance 0); two semantic IDs at the fraction of
      positions whose codes differ (over the longer one's length).
    Only when `train_counts` (int [len(catalog)], interactions per item in the training
    data) is given:
      f"novelty@{diversity_k}": mean -log2(p(item)) over the recommended valid items of the
      top-k lists, p = (count + 1) / (sum + n_items),
      f"popularity@{diversity_k}": mean train count of those items,
      "by_popularity": {"head": {...}, "tail": {...}}: examples split by their target; head
      = the floor(head_share * n_items) most popular items (by count, ties broken by
      position), tail = the rest.
    Only when `history_lengths` (int [n]) is given:
      "by_history": {f"cold (<= {cold_history})": {...}, f"warm (> {cold_history})": {...}}.
    Each split's sub-dict has "examples" and HR@k/NDCG@k for all ks (nan when empty).

    Empty input is a ValueError, and so is a target (or ranked entry) out of range, naming
    the example index.
    """
    n_items = len(catalog)
    ks = _check_ks(ks)
    if not _positive_int(diversity_k):
        raise ValueError(f"diversity_k must be a positive integer, got {diversity_k!r}")
    diversity_k = int(diversity_k)
    matrix, lengths = _ranked_matrix(ranked, n_items)
    n = matrix.shape[0]
    target = _targets(targets, n, n_items)
    counts = None if train_counts is None else _per_item_counts(train_counts, n_items)
    history = None if history_lengths is None else _history_lengths(history_lengths, n)
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"head_share must be in [0, 1], got {head_share}")

    ranks = _ranks(matrix, target, identifier_groups(catalog))
    result: dict = {"examples": n}
    result.update(_accuracy(ranks, ks))

    in_list = np.arange(matrix.shape[1]) < lengths[:, None]
    invalid = (matrix == -1) & in_list
    total_slots = int(lengths.sum())
    result["invalid"] = int(invalid.sum())
    result["invalid_rate"] = result["invalid"] / total_slots if total_slots else 0.0
    result["examples_with_invalid"] = int(invalid.any(axis=1).sum())

    seen = np.zeros(n_items, dtype=bool)
    done = 0
    for k in sorted(set(ks)):
        block = matrix[:, done:k]
        seen[block[block >= 0]] = True
        done = max(done, k)
        result[f"coverage@{k}"] = float(seen.mean())

    top = matrix[:, :diversity_k]
    result[f"diversity@{diversity_k}"] = _diversity(top, catalog)

    if counts is not None:
        recommended = top[top >= 0]
        if recommended.size:
            total = float(counts.sum())
            p = (counts[recommended] + 1.0) / (total + n_items)
            result[f"novelty@{diversity_k}"] = float(np.mean(-np.log2(p)))
            result[f"popularity@{diversity_k}"] = float(np.mean(counts[recommended]))
        else:
            result[f"novelty@{diversity_k}"] = math.nan
            result[f"popularity@{diversity_k}"] = math.nan
        n_head = math.floor(head_share * n_items + 1e-9)
        head_items = np.zeros(n_items, dtype=bool)
        head_items[np.argsort(-counts, kind="stable")[:n_head]] = True
        is_head = head_items[target]
        result["by_popularity"] = {
            "head": _split(ranks, is_head, ks),
            "tail": _split(ranks, ~is_head, ks),
        }
    if history is not None:
        cold = history <= cold_history
        result["by_history"] = {
            f"cold (<= {cold_history})": _split(ranks, cold, ks),
            f"warm (> {cold_history})": _split(ranks, ~cold, ks),
        }
    return result


def _check_ks(ks) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks is empty")
    for k in ks:
        if not _positive_int(k):
            raise ValueError(f"every k must be a positive integer, got {k!r}")
    return tuple(int(k) for k in ks)


def _positive_int(k) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1


def _accuracy(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    gain = np.where(ranks >= 0, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    for k in ks:
        hit = (ranks >= 0) & (ranks < k)
        if len(ranks):
            out[f"HR@{k}"] = float(hit.mean())
            out[f"NDCG@{k}"] = float(np.where(hit, gain, 0.0).mean())
        else:
            out[f"HR@{k}"] = out[f"NDCG@{k}"] = math.nan
    return out


def _split(ranks: np.ndarray, mask: np.ndarray, ks: tuple[int, ...]) -> dict:
    chosen = ranks[mask]
    return {"examples": int(len(chosen)), **_accuracy(chosen, ks)}


def _per_item_counts(train_counts, n_items: int) -> np.ndarray:
    counts = np.asarray(train_counts)
    if counts.shape != (n_items,):
        raise ValueError(
            f"train_counts must have one count per catalog item ({n_items}), "
            f"got shape {counts.shape}"
        )
    if counts.size and not np.issubdtype(counts.dtype, np.number):
        raise ValueError(f"train_counts must be numbers, got dtype {counts.dtype}")
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise ValueError("train_counts must be finite and non-negative")
    return counts.astype(np.float64)


def _history_lengths(history_lengths, n: int) -> np.ndarray:
    history = np.asarray(history_lengths)
    if history.shape != (n,):
        raise ValueError(
            f"history_lengths must have one length per example ({n}), got shape {history.shape}"
        )
    if history.size and not np.issubdtype(history.dtype, np.integer):
        raise ValueError(f"history_lengths must be integers, got dtype {history.dtype}")
    return history


# -- diversity ---------------------------------------------------------------------------


def _diversity(top: np.ndarray, catalog: Catalog) -> float:
    """Mean intra-list distance of the rows of `top` ([n, k], -1 = invalid), over the rows
    with at least two valid items; nan if there are none."""
    n, k = top.shape
    if k < 2:
        return math.nan
    valid = top >= 0
    first, second = np.triu_indices(k, 1)
    pair_valid = valid[:, first] & valid[:, second]
    pairs = pair_valid.sum(axis=1)
    scored = pairs > 0
    if not scored.any():
        return math.nan
    if catalog.kind == "title":
        distance_fn = _title_distances(catalog, k, first, second)
    else:
        distance_fn = _sid_distances(catalog, first, second)
    totals = np.zeros(n)
    rows = max(1, _PAIR_CHUNK // len(first))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        distance = distance_fn(top[start:stop])
        totals[start:stop] = np.where(pair_valid[start:stop], distance, 0.0).sum(axis=1)
    return float(np.mean(totals[scored] / pairs[scored]))


def _title_words(catalog: Catalog) -> tuple[np.ndarray, np.ndarray, int]:
    """Every title's distinct word ids as CSR (words, offsets) and the vocabulary size.

    Cached per catalog. Cost, once: the titles are joined into one string, lower-cased,
    stripped of punctuation and split in C; the words get ids through one dict, and each
    title's ids are deduplicated by one sort. About 5 us per title of 8 words on one busy
    CPU core (~5 s for a million titles); kept: 8 bytes per distinct (title, word).
    """
    cache = _cache(catalog)
    if "words" in cache:
        return cache["words"]
    titles = catalog.identifiers
    text = "\x00".join(titles)
    if text.count("\x00") == len(titles) - 1:
        tokens = text.lower().translate(_PUNCTUATION).replace("\x00", " \x00 ").split()
    else:  # a title holds the separator: split title by title
        tokens = []
        for title in titles:
            tokens.extend(title.lower().translate(_PUNCTUATION).replace("\x00", " ").split())
            tokens.append("\x00")
        tokens.pop()
    ids, vocabulary = _dense_ids(tokens)
    marker = vocabulary.get("\x00", -1)
    is_marker = ids == marker
    title = np.cumsum(is_marker)[~is_marker]
    n_words = max(1, len(vocabulary))
    key = title * n_words + ids[~is_marker]
    key.sort()
    if key.size:
        key = key[np.concatenate(([True], key[1:] != key[:-1]))]
    words = key % n_words
    offsets = np.zeros(len(titles) + 1, dtype=np.int64)
    np.cumsum(np.bincount(key // n_words, minlength=len(titles)), out=offsets[1:])
    cache["words"] = words, offsets, n_words
    return cache["words"]


def _title_distances(catalog: Catalog, k: int, first, second):
    """A function: ranked rows [m, k] (-1 = invalid) -> Jaccard distances [m, pairs].

    Cost per call, besides `_title_words` once per catalog: every (list, word, slot) triple
    of the valid slots is packed into one int64 and sorted, so that slots sharing a word in
    a list are adjacent; the intersection sizes of all slot pairs are then counted with at
    most k - 1 shifted comparisons and one bincount. Time O(W log W + k W) for W triples
    (lists x k x words per title: 8M for 100k lists of 10 titles of 8 words, about 1 s),
    memory O(W + lists x k^2), bounded by the chunking in `_diversity`.
    """
    words, offsets, n_words = _title_words(catalog)
    sizes = np.diff(offsets)
    n_pairs = len(first)
    pair_index = np.full((k, k), -1, dtype=np.int64)
    pair_index[first, second] = np.arange(n_pairs)

    def distances(top: np.ndarray) -> np.ndarray:
        m = top.shape[0]
        rows, cols = np.nonzero(top >= 0)
        item = top[rows, cols]
        count = sizes[item]
        slot_size = np.zeros((m, k), dtype=np.int64)
        slot_size[rows, cols] = count
        # Expand every valid slot into its words.
        starts = np.repeat(offsets[item] - np.cumsum(count) + count, count)
        word = words[starts + np.arange(int(count.sum()))]
        key = (np.repeat(rows, count) * n_words + word) * k + np.repeat(cols, count)
        key.sort()
        group, slot = np.divmod(key, k)
        hits = []
        for d in range(1, k):
            same = group[d:] == group[:-d]
            if not same.any():
                break  # no (list, word) has more than d slots
            a, b = slot[:-d][same], slot[d:][same]  # a < b: slots sort within a group
            hits.append((group[d:][same] // n_words) * n_pairs + pair_index[a, b])
        flat = np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)
        intersection = np.bincount(flat, minlength=m * n_pairs).reshape(m, n_pairs)
        union = slot_size[:, first] + slot_size[:, second] - intersection
        # Two titles without words (punctuation only) are at distance 0.
        return np.where(union > 0, 1.0 - intersection / np.maximum(union, 1), 0.0)

    return distances


def _sid_codes(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """Semantic IDs as int codes [n_items, longest] padded with -1, and their lengths (cached)."""
    cache = _cache(catalog)
    if "codes" not in cache:
        sids = catalog.identifiers
        length = np.fromiter(map(len, sids), dtype=np.int64, count=len(sids))
        width = int(length.max())
        tokens = list(itertools.chain.from_iterable(sids))
        codes = np.full((len(sids), width), -1, dtype=np.int32)
        codes[np.arange(width) < length[:, None]] = _dense_ids(tokens)[0]
        cache["codes"] = codes, length
    return cache["codes"]


def _sid_distances(catalog: Catalog, first, second):
    """A function: ranked rows [m, k] (-1 = invalid) -> code distances [m, pairs].

    Semantic IDs are compared position by position; the fraction of positions that differ
    is taken over the longer ID. Cost: tokens mapped to ints once per catalog, then
    O(lists x k^2 x length) time and chunk-bounded memory per call.
    """
    codes, length = _sid_codes(catalog)

    def distances(top: np.ndarray) -> np.ndarray:
        index = np.maximum(top, 0)
        a, b = index[:, first], index[:, second]
        codes_a = codes[a]
        equal = ((codes_a == codes[b]) & (codes_a >= 0)).sum(axis=-1)
        return 1.0 - equal / np.maximum(length[a], length[b])

    return distances


# -- reporting ---------------------------------------------------------------------------


def metrics_table(
    results: Mapping[str, Mapping], ks: Sequence[int] = KS, extra: Sequence[str] = ()
) -> str:
    """A markdown table: one row per method (dict key), columns HR@k and NDCG@k for ks
    (4 decimals), plus the `extra` metric names present in any result (e.g. "coverage@10",
    "invalid_rate"). A metric missing from one method's result shows as "-"."""
    if not results:
        raise ValueError("no results to tabulate")
    columns = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]
    columns += [name for name in extra if any(name in r for r in results.values())]
    columns = list(dict.fromkeys(columns))
    lines = [
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for method, result in results.items():
        cells = [_cell(result.get(column)) for column in columns]
        name = str(method).replace("|", "\\|")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)
