"""Constrained beam search over a catalog, with Hugging Face's beam-search semantics.

`beam_search` returns what `model.generate(num_beams=G, num_return_sequences=G,
length_penalty=lp)` returns under an exact prefix constraint to the catalog (same items,
order and scores), computed differently:

- each prompt is prefilled once and its cache rows expanded to the G beams, instead of
  prefilling G copies (HF expands the batch before the prefill);
- the cache is preallocated and reordered by copying only the rows that move
  (`BeamKVCache`);
- every step is one call of `rere.kernels.beam_step` on the trie's device tensors:
  log-softmax over the full vocabulary, the trie's allowed children, and the per-prompt
  top-2G, with no `[R, V]` mask and (on a GPU) no host synchronisation;
- once every beam of a prompt is on a forced title tail, the rest is scored in one forward
  and the competition replayed (`forced_replay`).

The selection rules are HF's (transformers 5.x `_beam_search`): of the top 2G candidates,
EOS candidates ranked in the first G join the finished pool (score / len**length_penalty);
the best G others keep running; a prompt stops once its pool is full and its best running
beam cannot beat the pool's worst (HF's `early_stopping=False` heuristic), after which its
pool is frozen. Where HF would keep padding beams with scores near -1e9 (fewer valid
continuations than beams), rere keeps empty slots: the valid results are the same.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from rere.index import CatalogIndex
from rere.kernels import BeamCandidates, beam_step, beam_topk, trie_masked_log_softmax
from rere.sampler.completions import Decoding, ItemLists, named_items
from rere.sampler import forced_replay
from rere.sampler.kv_cache import PromptDecoder


@dataclass
class BeamSearchOutput(ItemLists):
    """Per prompt p and beam rank g (best first). Empty slots have length 0, score -inf and
    item -1."""

    sequences: torch.Tensor  # int64 [P, G, T]: completion tokens, `pad_token_id` after the end
    lengths: torch.Tensor  # int64 [P, G]
    scores: torch.Tensor  # float32 [P, G]: sum of log-probs / length**length_penalty (HF)
    token_logprobs: torch.Tensor  # float32 [P, G, T]: log-prob of each token, 0 after the end
    item_ids: torch.Tensor  # int64 [P, G]: the (first) catalog item the completion names
    item_offsets: torch.Tensor  # int64 [P*G + 1]: CSR over slots p*G+g of ...
    item_values: torch.Tensor  # int64: ... every item the completion names (duplicates)

    @property
    def valid(self) -> torch.Tensor:
        return self.lengths > 0


def beam_search(
    model,
    index: CatalogIndex,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 16,
    length_penalty: float = 0.0,
    max_new_tokens: int | None = None,
    exclude_items=None,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    backend: str | None = None,
    stop_check_every: int | None = None,
    share_prompt: bool = True,
    replay_forced: bool = True,
) -> BeamSearchOutput:
    """Constrained beam search: the `num_beams` best catalog items per prompt.

    Args:
        model: a causal LM taking a transformers Cache (any `AutoModelForCausalLM`).
        index: the catalog index, its sequences ending with EOS.
        input_ids, attention_mask: `[P, L]` prompts, left-padded.
        max_new_tokens: default, the longest catalog sequence.
        exclude_items: per prompt, item ids never to return (a list of P lists, or an
            `ExcludedItems`); whole subtrees whose items are all excluded are cut from the walk.
        eos_token_id: default, the index's (from `from_catalog`) or the model's.
        backend: kernels backend (`None`: Triton on CUDA, torch elsewhere).
        stop_check_every: how often (in steps) to ask whether every prompt is done, the one
            host synchronisation of the decode loop. Default: every step on the CPU, every
            4 steps on a GPU; 0 never asks (runs `max_new_tokens` steps, no sync at all).
            Results do not depend on it: a finished search only idles.
        share_prompt: store each prompt's keys and values once for all its beams and attend
            with `shared_prompt_attention` (False: copy the prompt into every beam's cache,
            as HF does; for models whose attention layers bypass transformers'
            `AttentionInterface`).
        replay_forced: once every beam of a prompt is inside a title's last edge (its rest
            forced by the trie), score all remaining tokens in one forward and replay the
            beam competition from those scores (`rere.sampler.forced_replay`) instead of
            decoding them one step at a time. Checked at the `stop_check_every` points.
    """
    setup = Decoding.prepare(model, index, input_ids, attention_mask, max_new_tokens, exclude_items, eos_token_id,
                             pad_token_id)
    n_prompts, device, index, trie, max_new, excluded = (setup.n_prompts, setup.device, setup.index, setup.trie,
                                                         setup.max_new, setup.excluded)
    beams = num_beams

    def step(logits, states, scores, prompt_ids):
        if excluded is None:
            return beam_step(logits, states, scores, trie, 2 * beams, backend=backend)
        children = trie_masked_log_softmax(logits, states, trie, backend=backend)
        children = excluded.mask(children, scores.shape[1], prompt_ids)
        return beam_topk(scores, children, 2 * beams, backend=backend)

    decoder = PromptDecoder(model, input_ids, setup.attention_mask, max_new, index.vocab_size, share_prompt)
    search = _Search(n_prompts, beams, max_new, length_penalty, setup.eos, device)
    active = torch.arange(n_prompts, device=device)  # prompts the decoder still runs, in its row order
    candidates = step(decoder.prompt_logits, index.root_states(n_prompts), torch.zeros(n_prompts, 1, device=device),
                      active)
    search.advance(candidates, t=0)
    decoder.expand(beams)  # every beam of a prompt starts from the prompt's one row

    if stop_check_every is None:
        stop_check_every = 1 if device.type == "cpu" else 4
    beam_range = torch.arange(beams, device=device)
    for t in range(1, max_new):
        if stop_check_every and t % stop_check_every == 0:  # the loop's one host synchronisation
            if replay_forced:
                forced = forced_replay.forced_prompts(search, active, trie).cpu()  # one transfer for both tests
                if forced.any():
                    which = forced.nonzero()[:, 0].to(device)
                    apart = decoder if forced.all() else decoder.split_off(which)
                    forced_replay.replay(search, apart, active[which], t, trie, backend=backend)
            running = ~search.done[active]
            if not bool(running.any()):
                break
            if not bool(running.all()):  # finished prompts leave the model's batch
                decoder.keep_prompts(running.nonzero()[:, 0])
                active = active[running]
        rows = (active[:, None] * beams + beam_range).reshape(-1)
        logits = decoder.step(search.last_tokens().reshape(-1)[rows])
        found = step(logits, search.running_states.reshape(-1)[rows], search.running_scores[active], active)
        parents = search.advance(_for_all_prompts(found, active, n_prompts), t)
        decoder.reorder((parents[active] + torch.arange(active.numel(), device=device)[:, None] * beams).reshape(-1))
    return search.output(index, setup.pad, excluded)


def _for_all_prompts(found: BeamCandidates, active: torch.Tensor, n_prompts: int) -> BeamCandidates:
    """Candidates of the `active` prompts, placed among empty ones for the others."""
    if active.numel() == n_prompts:
        return found
    def spread(values, fill):  # noqa: E306
        return torch.full((n_prompts,) + values.shape[1:], fill, dtype=values.dtype,
                          device=values.device).index_copy_(0, active, values)
    return BeamCandidates(spread(found.parents, -1), spread(found.tokens, -1), spread(found.next_states, -1),
                          spread(found.scores, float("-inf")), spread(found.token_scores, float("-inf")))


class _Search:
    """Running beams and the finished pool of every prompt, updated by HF's rules."""

    def __init__(self, n_prompts, beams, max_new, length_penalty, eos, device):
        self.beams, self.max_new, self.length_penalty, self.eos = beams, max_new, length_penalty, eos
        shape = (n_prompts, beams)
        self.running_states = torch.full(shape, CatalogIndex.INVALID, dtype=torch.int64, device=device)
        self.running_scores = torch.full(shape, float("-inf"), device=device)
        self.running_tokens = torch.zeros(shape + (max_new,), dtype=torch.int64, device=device)
        self.running_logprobs = torch.zeros(shape + (max_new,), device=device)
        self.pool_scores = torch.full(shape, float("-inf"), device=device)
        self.pool_states = torch.full(shape, CatalogIndex.INVALID, dtype=torch.int64, device=device)
        self.pool_lengths = torch.zeros(shape, dtype=torch.int64, device=device)
        self.pool_tokens = torch.zeros(shape + (max_new,), dtype=torch.int64, device=device)
        self.pool_logprobs = torch.zeros(shape + (max_new,), device=device)
        self.done = torch.zeros(n_prompts, dtype=torch.bool, device=device)

    def _per_prompt(self) -> list[str]:
        """Every tensor of the search is indexed by prompt first."""
        return [name for name, value in vars(self).items() if isinstance(value, torch.Tensor)]

    def select(self, prompts: torch.Tensor) -> "_Search":
        """A search over these prompts alone (copies), to advance apart and `assign` back."""
        sub = copy.copy(self)
        for name in self._per_prompt():
            setattr(sub, name, getattr(self, name)[prompts])
        return sub

    def assign(self, prompts: torch.Tensor, sub: "_Search") -> None:
        for name in self._per_prompt():
            getattr(self, name)[prompts] = getattr(sub, name)

    def last_tokens(self) -> torch.Tensor:
        return self.running_tokens[:, :, self.step]

    def advance(self, c, t: int) -> torch.Tensor:
        """Apply the step-t candidates `c` ([P, 2G], best first); returns each new running
        beam's parent (its own index for an empty slot)."""
        self.step = t
        beams = self.beams
        valid = (c.parents >= 0) & torch.isfinite(c.scores)
        parent = c.parents.clamp(min=0)
        tokens = _gather_beams(self.running_tokens, parent)
        logprobs = _gather_beams(self.running_logprobs, parent)
        tokens[:, :, t] = c.tokens.clamp(min=0)
        logprobs[:, :, t] = c.token_scores
        hits = valid & ((c.tokens == self.eos) | (t == self.max_new - 1))
        top = torch.arange(c.scores.shape[1], device=c.scores.device) < beams

        # Finished pool: EOS among the first G candidates, unless the prompt stopped already.
        joins = hits & top & ~self.done[:, None]
        new_scores = torch.where(joins, c.scores / float(t + 1) ** self.length_penalty, float("-inf"))
        merged = torch.cat([self.pool_scores, new_scores], dim=1)
        keep = torch.sort(merged, dim=1, descending=True, stable=True).indices[:, :beams]
        self.pool_scores = merged.gather(1, keep)
        take = lambda old, new: _gather_beams(torch.cat([old, new], dim=1), keep)  # noqa: E731
        self.pool_tokens = take(self.pool_tokens, tokens)
        self.pool_logprobs = take(self.pool_logprobs, logprobs)
        self.pool_states = take(self.pool_states, c.next_states)
        self.pool_lengths = take(self.pool_lengths, torch.full_like(c.parents, t + 1))

        # Running beams: the best G candidates that did not stop, in order. Candidates that
        # do not run are scattered to a spare column G and dropped (no boolean indexing, so
        # no host synchronisation on a GPU).
        go_on = valid & ~hits
        slot = torch.cumsum(go_on.long(), dim=1) - 1
        dest = torch.where(go_on & (slot < beams), slot, beams)
        spread = lambda fill, values: torch.full(  # noqa: E731
            (dest.shape[0], beams + 1), fill, dtype=values.dtype, device=dest.device).scatter(1, dest, values)[:, :beams]
        self.running_scores = spread(float("-inf"), torch.where(go_on, c.scores, float("-inf")))
        self.running_states = spread(CatalogIndex.INVALID, c.next_states)
        source = spread(0, torch.arange(dest.shape[1], device=dest.device).expand_as(dest).contiguous())
        filled = torch.isfinite(self.running_scores)
        new_parent = torch.where(filled, parent.gather(1, source), torch.arange(beams, device=dest.device))
        self.running_states = torch.where(filled, self.running_states, CatalogIndex.INVALID)
        self.running_tokens = _gather_beams(tokens, source)
        self.running_logprobs = _gather_beams(logprobs, source)

        # HF's early-stopping heuristic (early_stopping=False): a prompt is done once its
        # pool is full and its best running beam cannot beat the pool's worst.
        best_running = self.running_scores[:, 0] / float(t + 1) ** self.length_penalty
        pool_full = torch.isfinite(self.pool_scores).all(dim=1)
        worst = torch.where(pool_full, self.pool_scores.min(dim=1).values, float("-inf"))
        can_improve = torch.isfinite(self.running_scores[:, 0]) & (best_running > worst)
        self.done |= ~can_improve
        stopped = self.done[:, None]  # stopped prompts run no more beams
        self.running_scores = torch.where(stopped, float("-inf"), self.running_scores)
        self.running_states = torch.where(stopped, CatalogIndex.INVALID, self.running_states)
        return new_parent

    def output(self, index: CatalogIndex, pad: int, excluded) -> BeamSearchOutput:
        lengths = self.pool_lengths
        positions = torch.arange(self.max_new, device=lengths.device)
        inside = positions < lengths[:, :, None]
        sequences = torch.where(inside, self.pool_tokens, pad)
        logprobs = torch.where(inside, self.pool_logprobs, 0.0)
        first, item_offsets, item_values = named_items(index, self.pool_states.reshape(-1), excluded, self.beams)
        return BeamSearchOutput(sequences, lengths, self.pool_scores, logprobs, first.reshape(lengths.shape),
                                item_offsets, item_values)


def _gather_beams(tensor: torch.Tensor, beam: torch.Tensor) -> torch.Tensor:
    """tensor[p, beam[p, j], ...] for every p, j."""
    index = beam.reshape(beam.shape + (1,) * (tensor.dim() - 2)).expand(beam.shape + tensor.shape[2:])
    return tensor.gather(1, index)
