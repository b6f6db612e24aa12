"""What a compiled Triton beam step guarantees against its torch twin, as a check.

Both compute in float32 from the same logits, with FP fusion off in the kernels
(`launch.COMPILE_OPTIONS`). They still differ in the last bits: on a GPU `tl.exp` and
`tl.log` compile to the approximate ex2 / lg2 instructions (a relative error of a few
ulp) and the logsumexp sums in another order. So, per prompt and slot:

- scores and token scores agree within `SCORE_ATOL + SCORE_RTOL * |score|`;
- parents, tokens and next states are equal, except among candidates whose scores lie
  within that tolerance of one another (a near-tie may fall either way), and in the last
  such group before the cut, where a candidate just outside the top k on one side may be
  just inside on the other.

Under `TRITON_INTERPRET=1` (numpy's exp and log) the two agree far more closely; the GPU
tests check exactly the statement above.
"""
from __future__ import annotations

import math

from rere.kernels.beam_topk import BeamCandidates

SCORE_ATOL = 1e-4
SCORE_RTOL = 1e-5


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= SCORE_ATOL + SCORE_RTOL * abs(b)


def candidate_differences(got: BeamCandidates, want: BeamCandidates) -> list[str]:
    """Where `got` breaks the guarantee above against `want` (the torch twin); [] if nowhere."""
    fields = ("parents", "tokens", "next_states", "scores", "token_scores")
    got_, want_ = ({f: getattr(c, f).detach().cpu().tolist() for f in fields} for c in (got, want))
    problems = []
    for p, scores in enumerate(want_["scores"]):
        k = len(scores)
        for j in range(k):
            if not _close(got_["scores"][p][j], scores[j]):
                problems.append(f"prompt {p} slot {j}: score {got_['scores'][p][j]} vs {scores[j]}")
        start = 0
        while start < k:  # groups of slots whose reference scores are within the tolerance
            end = start + 1
            while end < k and _close(scores[end], scores[end - 1]):
                end += 1
            keys = [[tuple(c[f][p][j] for f in ("parents", "tokens", "next_states")) for j in range(start, end)]
                    for c in (got_, want_)]
            if end < k and sorted(keys[0]) != sorted(keys[1]):
                problems.append(f"prompt {p} slots {start}-{end - 1}: (parent, token, next state) "
                                f"{keys[0]} vs {keys[1]}")
            wanted = {key: want_["token_scores"][p][start + i] for i, key in enumerate(keys[1])}
            for j, key in enumerate(keys[0], start=start):  # the same candidate scores the same on its own
                if key in wanted and not _close(got_["token_scores"][p][j], wanted[key]):
                    problems.append(f"prompt {p} slot {j}: token score {got_['token_scores'][p][j]} vs {wanted[key]}")
            start = end
    return problems


def assert_candidates_close(got: BeamCandidates, want: BeamCandidates) -> None:
    problems = candidate_differences(got, want)
    if problems:
        raise AssertionError(f"{len(problems)} differences beyond the GPU guarantee "
                             f"(rere.kernels.numerics), first: " + "; ".join(problems[:5]))

