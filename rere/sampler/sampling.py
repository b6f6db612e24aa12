"""Constrained multinomial sampling over a catalog: G random items per prompt.

For GRPO variants that sample rollouts instead of beam-searching them. Every completion
walks the catalog trie from the root to an EOS, so every sample names a catalog item;
unlike beam search, samples of one prompt are independent draws and may repeat items.

- Each prompt is prefilled once (`logits_to_keep=1`) and its cache rows expanded to the G
  samples (`BeamKVCache.expand`); the P * G rows then decode in lockstep, each row its own
  sample (no reordering). A row that has finished is still fed (EOS) and its output ignored.
- Each step, per row: `logits / temperature`; the allowed tokens of its trie position with
  their full-vocabulary log-probs (`rere.kernels.trie_masked_log_softmax`, one pass over the
  logits, CSR layout); excluded subtrees cut (`ExcludedItems.mask`); renormalised over what
  is left; top-k, then top-p, within the row's allowed set (HF's order and rules:
  `TopKLogitsWarper` then `TopPLogitsWarper`, each renormalising); one draw per row by
  inverting the row's cumulative distribution (a float64 cumulative sum over the CSR and a
  binary search per draw; `generator` makes it reproducible). The first step scores and
  filters each prompt's root once and draws its G samples from it.

No step loops over rows in Python and nothing `[rows, V]`-sized is allocated: the tempered
logits are the model's output divided in place (or its float32 copy, for half-precision
models: HF samples from float32 logits too).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from rere.index import CatalogIndex
from rere.kernels import trie_masked_log_softmax
from rere.kernels.trie_masked_log_softmax import segment_logsumexp
from rere.sampler.completions import Decoding, ItemLists, named_items
from rere.sampler.kv_cache import PromptDecoder


@dataclass
class SampleOutput(ItemLists):
    """Per prompt p and sample g (in draw order, not sorted). Field conventions follow
    `BeamSearchOutput`: an empty sample (nothing left to sample: every item excluded) has
    length 0 and item -1.

    `token_logprobs` and `sampling_logprobs` are both per token, 0 after the end:

    - `token_logprobs[p, g, t]` is `log_softmax(logits / temperature)[token]` over the FULL
      vocabulary: what a trainer's forward over prompt + completion recomputes (the rollout
      policy's "old" log-prob in a PPO/GRPO ratio, at the same temperature). It ignores the
      trie, the exclusions and top-k/top-p.
    - `sampling_logprobs[p, g, t]` is the log-prob of the token under the distribution it
      was actually drawn from: the full softmax restricted to the trie's allowed tokens (minus
      excluded subtrees), renormalised, then truncated by top-k and top-p and renormalised
      again. It is 0 where only one token was left. Its sum over t is the log-probability
      of the whole sample (importance weights, exact sampling probabilities).
    """

    sequences: torch.Tensor  # int64 [P, G, T]: completion tokens, `pad_token_id` after the end
    lengths: torch.Tensor  # int64 [P, G]
    token_logprobs: torch.Tensor  # float32 [P, G, T]: full-vocabulary log-prob of each token
    sampling_logprobs: torch.Tensor  # float32 [P, G, T]: log-prob under the sampled distribution
    item_ids: torch.Tensor  # int64 [P, G]: the (first) catalog item the completion names, -1 if none
    item_offsets: torch.Tensor  # int64 [P*G + 1]: CSR over slots p*G+g of ...
    item_values: torch.Tensor  # int64: ... every item the completion names (duplicates)

    @property
    def valid(self) -> torch.Tensor:
        """Samples that name an item. With the default `max_new_tokens` this is `lengths > 0`;
        a sample cut short by a smaller `max_new_tokens` keeps its tokens but is not valid."""
        return (self.lengths > 0) & (self.item_ids >= 0)


@torch.no_grad()
def sample(
    model,
    index: CatalogIndex,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_samples: int = 16,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    exclude_items=None,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> SampleOutput:
    """Sample `num_samples` catalog items per prompt from the model, constrained to the trie.

    Args:
        model: a causal LM taking a transformers Cache (any `AutoModelForCausalLM`), in the mode
            it should sample in (`model.eval()` for no dropout).
        index: the catalog index, its sequences ending with EOS.
        input_ids, attention_mask: `[P, L]` prompts, left-padded.
        num_samples: G, samples per prompt (independent draws: items may repeat).
        temperature: logits are divided by it (> 0) before everything else.
        top_k: keep the k most likely allowed tokens of each step (None: all).
        top_p: then keep the smallest set of most likely allowed tokens whose probability
            reaches top_p, in (0, 1] (None or 1: all).
        max_new_tokens: default, the longest catalog sequence; a smaller value cuts longer
            samples short (they keep their tokens but name no item).
        exclude_items: per prompt, item ids never to sample (a list of P lists, or an
            `ExcludedItems`); the probability of excluded subtrees goes to the rest.
        eos_token_id: default, the index's (from `from_catalog`) or the model's.
        pad_token_id: fills `sequences` after each sample's end; default EOS.
        generator: a `torch.Generator` for the draws (on any device); seeded, it makes the
            result reproducible for the same inputs, device and backend.
        backend: kernels backend (`None`: Triton on CUDA, torch elsewhere).
    """
    _check_arguments(num_samples, temperature, top_k, top_p, max_new_tokens)
    setup = Decoding.prepare(model, index, input_ids, attention_mask, max_new_tokens, exclude_items, eos_token_id,
                             pad_token_id)
    n_prompts, device, index, trie, max_new, excluded = (setup.n_prompts, setup.device, setup.index, setup.trie,
                                                         setup.max_new, setup.excluded)
    eos, pad = setup.eos, setup.pad
    temperature = float(temperature)
    samples = num_samples
    rows = n_prompts * samples
    draw = _Uniforms(generator, device)

    def children_of(logits, states, rows_per_prompt):
        """Allowed tokens with full-vocabulary scores, and the scores after exclusion."""
        logits = logits.float()  # the model's fresh output, or its float32 copy: ours to scale
        if temperature != 1.0:
            logits.div_(temperature)  # in place: a new [rows, V] buffer costs ~10x more on a CPU
        children = trie_masked_log_softmax(logits, states, trie, backend=backend)
        allowed = excluded.mask(children, rows_per_prompt).scores if excluded is not None else children.scores
        return children, allowed

    sequences = torch.full((rows, max_new), pad, dtype=torch.int64, device=device)
    token_logprobs = torch.zeros(rows, max_new, device=device)
    sampling_logprobs = torch.zeros(rows, max_new, device=device)
    lengths = torch.zeros(rows, dtype=torch.int64, device=device)
    end_states = torch.full((rows,), CatalogIndex.INVALID, dtype=torch.int64, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)

    decoder = PromptDecoder(model, input_ids, setup.attention_mask, max_new, index.vocab_size)
    decoder.expand(samples)  # every sample of a prompt starts from the prompt's one row
    # Step 0 scores and filters the P prompt rows once (all G samples of a prompt share the
    # root and the logits) and draws G times from each; later steps draw once per row.
    logits, states = decoder.prompt_logits, index.root_states(n_prompts)

    for t in range(max_new):
        if t > 0:
            if bool(done.all()):  # one host synchronisation per step, to stop early
                break
            logits = decoder.step(feed)
        children, allowed = children_of(logits, states, 1 if t == 0 else samples)
        tokens, next_states, full = children.tokens, children.next_states, children.scores
        logprobs = filter_top_k_top_p(allowed, children.offsets, children.rows, top_k, top_p)
        entry, drawn = _draw(logprobs, children.offsets, samples if t == 0 else 1, draw)
        if tokens.numel():
            token, state = tokens[entry].long(), next_states[entry]
            full_lp, sampled_lp = full[entry], logprobs[entry]
        else:  # nothing allowed anywhere (every row finished or excluded everything)
            token = state = torch.full((rows,), CatalogIndex.INVALID, dtype=torch.int64, device=device)
            full_lp = sampled_lp = torch.zeros(rows, device=device)
        sequences[:, t] = torch.where(drawn, token, pad)
        token_logprobs[:, t] = torch.where(drawn, full_lp, 0.0)
        sampling_logprobs[:, t] = torch.where(drawn, sampled_lp, 0.0)
        lengths += drawn.long()
        ended = drawn & (token == eos)
        end_states = torch.where(ended, state, end_states)
        done |= ~drawn | ended  # a row with nothing left to draw ends too (empty at t = 0)
        states = torch.where(done, CatalogIndex.INVALID, state)  # finished rows allow nothing
        feed = torch.where(drawn, token, eos)  # finished rows are fed EOS; their outputs are ignored

    first, item_offsets, item_values = named_items(index, end_states, excluded, samples)
    shape = (n_prompts, samples)
    return SampleOutput(sequences.reshape(shape + (max_new,)), lengths.reshape(shape),
                        token_logprobs.reshape(shape + (max_new,)), sampling_logprobs.reshape(shape + (max_new,)),
                        first.reshape(shape), item_offsets, item_values)


def filter_top_k_top_p(scores: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor,
                       top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """The sampling distribution of every CSR row, as log-probs aligned with `scores`.

    `scores` are unnormalised log-weights (-inf: not allowed) of the entries; row r owns
    entries offsets[r]:offsets[r+1] and `rows` names each entry's row. The result is
    renormalised within each row, restricted to the row's `top_k` best entries (ties: the
    earlier entry), renormalised, restricted to the smallest prefix of its best entries
    whose probability reaches `top_p`, and renormalised again; dropped entries get -inf. An
    all -inf row stays all -inf. Same rules as HF's `TopKLogitsWarper` + `TopPLogitsWarper`
    on a dense row, up to exact ties.
    """
    n_rows = offsets.numel() - 1
    logprobs = _renormalize(scores, rows, n_rows)
    if (top_k is None and (top_p is None or top_p >= 1.0)) or scores.numel() == 0:
        return logprobs
    # Sort entries by (row, log-prob descending): a stable sort by score, then a stable sort
    # by row. Rows keep their CSR extents, so sorted position i still belongs to rows[i].
    order = torch.sort(logprobs, descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    sorted_lp = logprobs[order]
    keep = torch.isfinite(sorted_lp)
    if top_k is not None:
        rank = torch.arange(order.numel(), device=order.device) - offsets[rows]
        keep &= rank < top_k
        sorted_lp = _renormalize(torch.where(keep, sorted_lp, float("-inf")), rows, n_rows)
    if top_p is not None and top_p < 1.0:
        # Mass of the better entries of the same row (exclusive cumulative sum, in float64
        # so that long CSR arrays do not lose the small differences).
        probs = torch.exp(sorted_lp).double()
        total = torch.cumsum(probs, 0)
        start = torch.cat([total.new_zeros(1), total])[offsets[:-1]]
        before = total - probs - start[rows]
        keep &= before < top_p  # the best entry (before = 0) is always kept
    filtered = torch.full_like(logprobs, float("-inf"))
    filtered[order] = torch.where(keep, sorted_lp, float("-inf"))
    return _renormalize(filtered, rows, n_rows)


def _renormalize(scores, rows, n_rows):
    lse = segment_logsumexp(scores, rows, n_rows)
    lse = torch.where(torch.isfinite(lse), lse, 0.0)  # an all -inf row stays -inf (not NaN)
    return scores - lse[rows]


class _Uniforms:
    """float64 uniform draws from `generator` (on its own device), on the sampling device."""

    def __init__(self, generator, device):
        self.generator, self.device = generator, torch.device(device)

    def __call__(self, n: int) -> torch.Tensor:
        on = self.generator.device if self.generator is not None else self.device
        return torch.rand(n, generator=self.generator, device=on, dtype=torch.float64).to(self.device)


def _draw(logprobs: torch.Tensor, offsets: torch.Tensor, draws_per_row: int, uniform: _Uniforms):
    """`draws_per_row` independent draws from each CSR row's categorical distribution
    `exp(logprobs)` (normalised per row), by inverting the row's cumulative distribution: one
    uniform and one binary search per draw, whatever the row's width (the root of a title
    catalog has ~50k children; Gumbel-max would need a noise value per child per sample).

    Returns, for the `rows * draws_per_row` draws (row-major), the entry drawn (0 where none)
    and whether one was (a row of only -inf, or an empty row, draws nothing)."""
    n_rows = offsets.numel() - 1
    n_draws = n_rows * draws_per_row
    device = logprobs.device
    if logprobs.numel() == 0:
        return (torch.zeros(n_draws, dtype=torch.int64, device=device),
                torch.zeros(n_draws, dtype=torch.bool, device=device))
    probs = torch.exp(logprobs.double())  # float64: the cumulative sum spans all rows
    edges = torch.cat([probs.new_zeros(1), torch.cumsum(probs, 0)])
    row = torch.arange(n_rows, device=device).repeat_interleave(draws_per_row)
    start, end = edges[offsets[:-1]][row], edges[offsets[1:]][row]
    # First entry whose cumulative probability passes the target: never one of probability
    # 0 (its cumulative value equals its predecessor's), never outside the row (u < 1).
    target = start + uniform(n_draws) * (end - start)
    entry = torch.searchsorted(edges[1:], target, right=True)
    entry = torch.minimum(torch.maximum(entry, offsets[:-1][row]), offsets[1:][row] - 1)
    drawn = end > start
    entry = torch.where(drawn, entry, 0)
    # A parallel cumulative sum (GPU) may round unevenly across its tiles; never let that
    # pick an entry of probability 0 (odds ~1e-16): take the row's best entry instead.
    # Computed unconditionally, so that checking costs no host synchronisation.
    bad = drawn & (probs[entry] == 0)
    return torch.where(bad, _row_argmax(logprobs, offsets)[row], entry), drawn


def _row_argmax(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The first entry of the largest value of every CSR row."""
    n_rows = offsets.numel() - 1
    rows = torch.arange(n_rows, device=values.device).repeat_interleave(offsets.diff(), output_size=values.numel())
    best = torch.full((n_rows,), float("-inf"), device=values.device).scatter_reduce(0, rows, values, "amax")
    ids = torch.where(values == best[rows], torch.arange(values.numel(), device=values.device), values.numel())
    first = torch.full((n_rows,), values.numel(), device=values.device).scatter_reduce(0, rows, ids, "amin")
    return first.clamp_(max=max(values.numel() - 1, 0))


def _check_arguments(num_samples, temperature, top_k, top_p, max_new_tokens):
    def integer(value):
        try:
            return None if isinstance(value, bool) else operator.index(value)
        except TypeError:
            return None

    def number(value):
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("nan")

    if (integer(num_samples) or 0) < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not 0 < number(temperature) < float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (integer(top_k) or 0) < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0 < number(top_p) <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if max_new_tokens is not None and (integer(max_new_tokens) or 0) < 1:
        raise ValueError(f"max_new_tokens must be a positive integer or None, got {max_new_tokens!r}")
