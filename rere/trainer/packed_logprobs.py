"""Completion log-probs with each prompt run once for its whole group (prefix sharing).

GRPO scores G completions of the same prompt. Run as G separate sequences, the prompt
(300-550 tokens) is processed G times for ~30 completion tokens each. Packed instead, one
row holds the prompt once followed by the G completions back to back:

    [ prompt (n tokens) | c_1[:-1] | c_2[:-1] | ... | c_G[:-1] | padding ]

with a block attention mask (every token sees the prompt; a completion token also sees the
earlier tokens of its own completion, nothing of the others) and position ids that restart
at n for every completion, so each completion token gets exactly the hidden state it gets
in its own sequence. The last token of a completion (EOS) is never an input: nothing is
predicted from it. Token t of completion g is predicted from the prompt's last position
(t = 0) or from its own previous token. The gradient reaches the shared prompt from all G
completions through the mask, so loss and gradients equal the per-sequence computation
(tests/test_packed_logprobs.py) while the model runs n + sum(l_g - 1) tokens instead of
G * n + sum(l_g): 880 instead of 6,880 for n = 400, G = 16, l = 30.

Log-probs come from `rere.kernels.fused_linear_selective_log_softmax` on the predicting
hidden states only, so no `[tokens, V]` logits exist. The same packing serves the policy
(with gradient), the old policy and the reference model (without).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rere.kernels import fused_linear_selective_log_softmax


@dataclass
class PackedBatch:
    """Rows of packed groups and where each completion token's prediction comes from.

    N = total completion tokens, S = number of completions (p * G + g order)."""

    input_ids: torch.Tensor  # int64 [B, L]
    position_ids: torch.Tensor  # int64 [B, L]
    attention_mask: torch.Tensor  # bool [B, 1, L, L]: True where a query may attend a key
    source: torch.Tensor  # int64 [N]: flat index into [B * L] of the hidden state predicting each token
    token_ids: torch.Tensor  # int64 [N]: the completion tokens scored
    sequence: torch.Tensor  # int64 [N]: which completion each token belongs to
    lengths: torch.Tensor  # int64 [S]: completion lengths (0 for an empty slot)

    @property
    def num_sequences(self) -> int:
        return self.lengths.numel()

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pack_groups(prompts: list[torch.Tensor], completions: torch.Tensor, lengths: torch.Tensor, *,
                pad_token_id: int = 0, share_prompt: bool = True) -> PackedBatch:
    """Pack P prompts (1-D token ids, no padding) with their G completions each.

    completions: int64 [P, G, T], lengths: int64 [P, G] (tokens up to and including EOS;
    0 = empty slot, scored by nothing). `share_prompt=False` gives the per-sequence layout
    (one row per completion, prompt repeated) through the same code, for comparison."""
    P, G = lengths.shape
    if len(prompts) != P or completions.shape[:2] != (P, G):
        raise ValueError(f"{len(prompts)} prompts, completions {tuple(completions.shape)}, lengths {tuple(lengths.shape)}: "
                         "need P prompts, completions [P, G, T] and lengths [P, G]")
    if any(p.numel() == 0 for p in prompts):
        raise ValueError("an empty prompt: the first completion token needs a prompt position to predict it from")
    lengths = lengths.to("cpu", torch.int64)
    completions = completions.cpu()
    rows = []  # per row: list of (tokens, positions, segment id), segment -1 = the prompt
    predicted = []  # per completion: (row, [source columns], [token ids])
    for p, prompt in enumerate(prompts):
        prompt = prompt.cpu().to(torch.int64)
        n = prompt.numel()
        groups = [list(range(G))] if share_prompt else [[g] for g in range(G)]
        for members in groups:
            if not share_prompt and lengths[p, members[0]] == 0:
                predicted.append((None, [], []))
                continue
            pieces, column = [(prompt, torch.arange(n), -1)], n
            for g in members:
                length = int(lengths[p, g])
                tokens = completions[p, g, :length]
                sources = [n - 1] + list(range(column, column + length - 1)) if length else []
                predicted.append((len(rows), sources, tokens))
                if length > 1:
                    pieces.append((tokens[:-1], n + torch.arange(length - 1), g))
                    column += length - 1
            rows.append(pieces)
    width = max(sum(t.numel() for t, _, _ in pieces) for pieces in rows) if rows else 1
    B = len(rows)
    input_ids = torch.full((B, width), pad_token_id, dtype=torch.int64)
    position_ids = torch.zeros((B, width), dtype=torch.int64)
    segment = torch.full((B, width), -2, dtype=torch.int64)  # -2 = padding
    for r, pieces in enumerate(rows):
        tokens = torch.cat([t for t, _, _ in pieces])
        used = tokens.numel()
        input_ids[r, :used] = tokens
        position_ids[r, :used] = torch.cat([q for _, q, _ in pieces])
        segment[r, :used] = torch.cat([torch.full((t.numel(),), s, dtype=torch.int64) for t, _, s in pieces])
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = causal & (key != -2) & ((key == -1) | (key == query))
    mask |= torch.eye(width, dtype=torch.bool)  # padding rows see themselves: no all-masked softmax row
    source = [r * width + s for r, sources, _ in predicted for s in sources]
    token_ids = [t for _, _, tokens in predicted for t in (tokens.tolist() if len(tokens) else [])]
    sequence = [i for i, (_, sources, _) in enumerate(predicted) for _ in sources]
    as_long = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
    return PackedBatch(input_ids, position_ids, mask[:, None], as_long(source), as_long(token_ids),
                       as_long(sequence), lengths.reshape(-1).clone())


class CompletionScorer(nn.Module):
    """`forward(batch) -> float32 [N]` log-probs of the completion tokens of a PackedBatch.

    A module of its own so that DDP/FSDP wrap the whole computation (decoder + LM head):
    the trainer calls the wrapper's forward once per micro-batch. Works with peft models
    (the decoder and head are looked up through the wrapper)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        if getattr(model.config, "final_logit_softcapping", None):
            raise ValueError(f"{type(model).__name__} soft-caps its logits (final_logit_softcapping); "
                             "the fused log-prob path assumes plain logits")
        self.model = model
        self.temperature = temperature

    def warm_up(self) -> torch.Tensor:
        """One forward of a one-token completion (FSDP's first forward, `distributed.shard`)."""
        device = next(self.model.parameters()).device
        one = torch.zeros((1, 1, 1), dtype=torch.int64)
        return self(pack_groups([torch.zeros(1, dtype=torch.int64)], one, torch.ones((1, 1), dtype=torch.int64)).to(device))

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        hidden = self.model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=False).last_hidden_state
        chosen = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.source)
        return head_logprobs(self.model, chosen, batch.token_ids, self.temperature)


def head_logprobs(model: nn.Module, hidden: torch.Tensor, token_ids: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """float32 log-probs of `token_ids` under the LM head applied to `hidden` ([N, H]), with
    no [N, V] logits. The head runs in the weights' dtype, outside autocast: the fused kernel
    wants one dtype, and float32 log-probs keep GRPO's ratios and the SFT loss exact."""
    head = model.get_output_embeddings()
    with torch.autocast(hidden.device.type, enabled=False):
        return fused_linear_selective_log_softmax(hidden.to(head.weight.dtype), head.weight, token_ids,
                                                  getattr(head, "bias", None), temperature=temperature)
