"""The GRPO objective on flat completion tokens (the layout of `packed_logprobs.PackedBatch`).

Per token t of completion s with advantage A_s:

    ratio   = exp(logp - logp_old)
    surr    = min(ratio * A_s, clip(ratio, 1 - eps_low, 1 + eps_high) * A_s)
    kl      = exp(ref - logp) - (ref - logp) - 1          (k3 estimator, >= 0)
    loss_t  = -surr + beta * kl

and the per-token losses are reduced as TRL's GRPOTrainer does (the ReRe code is built on it):

- "grpo": mean over each completion's tokens, then mean over completions (ReRe's default);
- "bnpo": sum over all tokens of the micro-batch / its token count;
- "dr_grpo": sum over all tokens / (completions x max_completion_length) (Dr. GRPO: no
  length bias);
- "dapo": sum over all tokens / the token count of the whole optimizer step (all
  micro-batches and ranks), given as `tokens_in_step`.

With one optimisation pass per rollout, logp_old = logp.detach() (ratio 1, the clip never
binds, the gradient is the policy gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rere.trainer.grpo_config import LOSS_TYPES


@dataclass
class LossParts:
    loss: torch.Tensor  # scalar, differentiable
    kl: float  # mean per-token k3 KL (0 without a reference)
    clip_fraction: float  # share of tokens whose ratio was clipped where it mattered
    tokens: int


def grpo_loss(logprobs: torch.Tensor, sequence: torch.Tensor, advantages: torch.Tensor, *,
              old_logprobs: torch.Tensor | None = None, ref_logprobs: torch.Tensor | None = None,
              beta: float = 1e-3, epsilon_low: float = 0.2, epsilon_high: float = 0.2, loss_type: str = "grpo",
              num_sequences: int | None = None, max_completion_length: int | None = None,
              tokens_in_step: int | None = None) -> LossParts:
    """GRPO loss of one micro-batch.

    logprobs, old_logprobs, ref_logprobs: float32 [N] per completion token; sequence: int64
    [N] completion of each token (0..S-1); advantages: [S]. Completions with no tokens
    count in "grpo"'s mean only if `num_sequences` says so (default: those with tokens)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    A = advantages.to(logprobs.device, torch.float32)[sequence]
    ratio = torch.exp(logprobs - old)
    unclipped, clipped = ratio * A, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * A
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros((), device=logprobs.device)
    if ref_logprobs is not None and beta != 0.0:
        delta = ref_logprobs - logprobs
        token_kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * token_kl
        kl = token_kl.detach().mean() if token_kl.numel() else kl
    N = per_token.numel()
    S = int(advantages.numel())
    if loss_type == "grpo":
        counts = torch.zeros(S, device=logprobs.device).index_add_(0, sequence, torch.ones_like(per_token))
        sums = torch.zeros(S, device=logprobs.device, dtype=per_token.dtype).index_add_(0, sequence, per_token)
        has_tokens = counts > 0
        denominator = num_sequences if num_sequences is not None else int(has_tokens.sum())
        loss = (sums[has_tokens] / counts[has_tokens]).sum() / max(denominator, 1)
    elif loss_type == "bnpo":
        loss = per_token.sum() / max(N, 1)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        loss = per_token.sum() / (S * max_completion_length)
    else:
        if tokens_in_step is None:
            raise ValueError("loss_type 'dapo' needs tokens_in_step (tokens of the whole optimizer step)")
        loss = per_token.sum() / max(tokens_in_step, 1)
    binding = (clipped < unclipped).detach()
    clip_fraction = float(binding.float().mean()) if N else 0.0
    return LossParts(loss, float(kl), clip_fraction, N)
