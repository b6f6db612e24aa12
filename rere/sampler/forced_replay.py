"""Forced-continuation replay: finish a prompt's beam search in one forward once every beam
is inside a title's last edge.

Titles become unique a few tokens in; after that the trie allows exactly one continuation
(path compression keeps it as one edge into a leaf), yet step-by-step decoding would still
spend one sequential model call per token on it. Once every running beam of a prompt is
on such an edge, the rest of the search is fixed except for the scores: each beam's
remaining tokens are known, so one forward over `[beams, m]` gives every log-prob they
will need, and HF's step-by-step competition (finished pool, early stopping, length
penalty, the `max_new_tokens` cut) is then replayed from those numbers by the very same
`_Search.advance`, one cheap step per token. Results equal the step-by-step search up to
the float rounding of a chunked versus a one-token forward (~1e-6 in fp32).

The forward can compute tokens that are never used: a beam that drops out early (the
pool filled with better items) has its whole tail scored anyway, and short tails are padded
to the longest. benchmarks/RESULTS.md has what it buys.
"""
from __future__ import annotations

import torch

from rere.index.tensors import TrieTensors, forced_lengths, forced_tokens
from rere.kernels import BeamCandidates, selective_log_softmax

# Logits of the chunked forward are materialised `[rows, m, V]`; longer tails are fed in
# pieces so that one piece's logits stay under this many bytes.
LOGITS_BUDGET_BYTES = 1 << 30


def forced_prompts(search, prompts: torch.Tensor, trie: TrieTensors) -> torch.Tensor:
    """bool per prompt in `prompts`: not done, and every running beam is on a forced edge
    with at least 2 tokens left for one of them (a 1-token tail is just a normal step)."""
    states = search.running_states[prompts]
    running = torch.isfinite(search.running_scores[prompts])
    lengths = forced_lengths(trie, states.reshape(-1)).reshape(states.shape)
    all_forced = ((lengths > 0) | ~running).all(dim=1)
    longest = torch.where(running, lengths, 0).max(dim=1).values
    return all_forced & (longest >= 2) & ~search.done[prompts]


def replay(search, decoder, prompts: torch.Tensor, t: int, trie: TrieTensors, *, backend: str | None = None) -> None:
    """Finish the search of `prompts` (all forced, see `forced_prompts`) from step t on.
    `decoder` holds exactly these prompts' rows, in this order; its cache is consumed."""
    sub = search.select(prompts)
    n, beams = sub.running_states.shape
    states = sub.running_states.reshape(-1)
    steps_left = search.max_new - t
    width = min(int(forced_lengths(trie, states).max()), steps_left)
    tails = forced_tokens(trie, states, width)  # [n*G, width], -1 past each tail
    inputs = torch.cat([sub.last_tokens().reshape(-1, 1), tails[:, :-1].clamp(min=0)], dim=1)
    logprobs = _token_logprobs(decoder, inputs, tails, backend)

    follows = torch.arange(beams, device=states.device).repeat(n, 1)  # tail row each running slot is on
    first_row = torch.arange(n, device=states.device)[:, None] * beams
    for s in range(width):
        rows = first_row + follows
        tokens, token_scores = tails[rows, s], logprobs[rows, s]
        scores = torch.where(torch.isfinite(sub.running_scores) & (tokens >= 0),
                             sub.running_scores + token_scores, float("-inf"))
        # One candidate per beam, best first; ties to the lower beam, as beam_topk orders them.
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        scores = scores.gather(1, order)
        valid = torch.isfinite(scores)
        candidates = BeamCandidates(
            parents=torch.where(valid, order, -1),
            tokens=torch.where(valid, tokens.gather(1, order), -1),
            next_states=torch.where(valid, sub.running_states.gather(1, order) + 1, -1),
            scores=scores,
            token_scores=torch.where(valid, token_scores.gather(1, order), float("-inf")),
        )
        follows = follows.gather(1, sub.advance(candidates, t + s))
    if width < steps_left:  # a tail that ends without EOS leaves a beam with nothing allowed
        sub.advance(_no_candidates(n, beams, states.device), t + width)
    search.assign(prompts, sub)


def _token_logprobs(decoder, inputs: torch.Tensor, targets: torch.Tensor, backend: str | None) -> torch.Tensor:
    """log p(targets[r, j] | prompt, beam r so far, inputs[r, :j+1]) for every row r and
    position j, in fp32 over the full vocabulary (as `beam_step` scores); 0 where the target
    is -1."""
    rows, width = inputs.shape
    logits = decoder.prompt_logits
    per_position = rows * logits.shape[-1] * logits.element_size()
    piece = max(1, LOGITS_BUDGET_BYTES // per_position)
    out = []
    for start in range(0, width, piece):
        logits = decoder.extend(inputs[:, start:start + piece])
        out.append(selective_log_softmax(logits, targets[:, start:start + piece], ignore_index=-1, backend=backend))
    return torch.cat(out, dim=1)


def _no_candidates(n: int, beams: int, device) -> BeamCandidates:
    empty = torch.full((n, beams), -1, dtype=torch.int64, device=device)
    none = torch.full((n, beams), float("-inf"), device=device)
    return BeamCandidates(parents=empty, tokens=empty, next_states=empty, scores=none, token_scores=none)
