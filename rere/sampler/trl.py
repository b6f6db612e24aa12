"""Constrained beam-search rollouts for TRL's `GRPOTrainer(rollout_func=...)`.

```python
from trl import GRPOConfig, GRPOTrainer
from rere.sampler.trl import make_rollout_func

rollout = make_rollout_func(None, index, tokenizer, num_beams=16)   # None: the trainer's model
trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[rere_reward],
                      args=GRPOConfig(num_generations=16, ...), train_dataset=dataset,
                      rollout_func=rollout)
```

The contract followed is TRL 1.16.0's (`trl/trainer/grpo_trainer.py`: the `rollout_func`
argument of `GRPOTrainer`, `_generate` and `_generate_and_score_completions`):

- TRL calls `rollout_func(prompts, trainer)` with this process's slice of the batch, the
  raw `prompt` column (strings, or conversations: chat templating is the rollout's job).
  TRL's `RepeatSampler` has already repeated every prompt `num_generations` times in a
  row, and the function returns one completion per incoming prompt, in the same order
  (rewards are later grouped by `view(-1, num_generations)` over the gathered batch).
- It returns a dict with `prompt_ids`, `completion_ids` (lists of token-id lists, unpadded:
  TRL pads prompts on the left and completions on the right) and `logprobs` (per-token
  log-probs of the completion under the policy that generated it). An `env_mask` (one 0/1
  list per completion) is multiplied into the loss mask; every other key is an "extra
  field": a list of one value per completion, copied into that completion's input row and
  so passed to the reward functions as a keyword argument of the same name (it overwrites a
  dataset column of that name).

What this adapter returns, per completion (slot `g` of the group of prompt `p`):
`completion_ids` and `logprobs` of the beam of rank `g` (`rere.sampler.beam_search`;
log-probs are the full-vocabulary `log_softmax` of the model, as the trainer recomputes
them), and the extra fields `beam_rank` (0-based rank in its group: ReRe's ranking reward
needs it), `item_id` (the catalog item named, -1 for none) and `all_item_ids` (every item
named: several where catalog items share an identifier, as duplicate titles do). A group
with fewer valid items than beams (a tiny catalog, or exclusions) gets empty slots: their
completion is the single token EOS with log-prob 0, `env_mask` [0] (no loss on it),
`item_id` -1 and `all_item_ids` [].

On several processes TRL cuts the repeated batch into equal per-process slices, so a
group can straddle two processes (TRL's own sampler figure shows it); the adapter then
reads `trainer.accelerator.process_index` to know where its slice starts in its group,
searches the whole group and keeps the ranks that fall in its slice.

TRL is not imported at module import (it is optional): only the default model getter
(`model_or_getter=None`, the trainer's model) imports `trl.models.unwrap_model_for_generation`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rere.index import CatalogIndex
from rere.sampler.beam_search import BeamSearchOutput, beam_search

__all__ = ["BeamSearchRollout", "Group", "make_rollout_func", "plan_groups"]


@dataclass(frozen=True)
class Group:
    """Positions `start:stop` of the incoming prompts: copies of one prompt, holding beam
    ranks `first_rank, first_rank + 1, ...` of its search."""

    start: int
    stop: int
    first_rank: int


def plan_groups(prompts: Sequence[Any], group_size: int, first_rank: int = 0,
                partial_end: bool = False) -> list[Group]:
    """Cut prompts repeated `group_size` times in a row into their groups.

    `first_rank` is the rank the first prompt holds in its group (0 unless a group started
    on the previous process); `partial_end` allows the last group to continue on the next
    process. Raises ValueError, naming the position, where the prompts are not groups of
    `group_size` identical prompts.
    """
    if group_size < 1:
        raise ValueError(f"num_beams must be at least 1, got {group_size}")
    if not 0 <= first_rank < group_size:
        raise ValueError(f"first_rank must be in [0, {group_size}), got {first_rank}")
    groups, start, rank = [], 0, first_rank
    while start < len(prompts):
        stop = min(start + group_size - rank, len(prompts))
        for position in range(start + 1, stop):
            if prompts[position] != prompts[start]:
                raise ValueError(
                    f"prompts[{position}] differs from prompts[{start}]: rollout_func expects every prompt repeated "
                    f"num_beams={group_size} times in a row (TRL's sampler with num_generations={group_size}), and "
                    f"the group starting at position {start} ends at position {start + group_size - rank - 1}")
        if stop - start < group_size - rank and not partial_end:
            raise ValueError(
                f"got {len(prompts)} prompts: the last group (from position {start}) has {stop - start} of the "
                f"num_beams={group_size} copies of its prompt; the number of prompts must be a multiple of num_beams")
        groups.append(Group(start, stop, rank))
        start, rank = stop, 0
    return groups


class BeamSearchRollout:
    """A TRL `rollout_func`: `rollout(prompts, trainer=None) -> dict` (see the module
    docstring for what it returns). Build it with `make_rollout_func`."""

    def __init__(self, model_or_getter, index: CatalogIndex, tokenizer, num_beams: int | None = 16, *,
                 max_prompt_length: int | None = None, length_penalty: float = 0.0, exclude_items=None,
                 max_new_tokens: int | None = None, eos_token_id: int | None = None,
                 add_special_tokens: bool = True, chat_template_kwargs: Mapping[str, Any] | None = None,
                 prompts_per_call: int | None = None, backend: str | None = None):
        if num_beams is not None and num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {num_beams}")
        if max_prompt_length is not None and max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be at least 1, got {max_prompt_length}")
        if prompts_per_call is not None and prompts_per_call < 1:
            raise ValueError(f"prompts_per_call must be at least 1, got {prompts_per_call}")
        self.model_or_getter = model_or_getter
        self.index = index
        self.tokenizer = tokenizer
        self.num_beams = num_beams
        self.max_prompt_length = max_prompt_length
        self.length_penalty = length_penalty
        self.exclude_items = exclude_items
        self.max_new_tokens = max_new_tokens
        self.eos_token_id = eos_token_id
        self.add_special_tokens = add_special_tokens
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.prompts_per_call = prompts_per_call
        self.backend = backend

    # ---------------------------------------------------------------------------- the call
    def __call__(self, prompts: Sequence[Any], trainer=None) -> dict[str, list]:
        beams = self._group_size(trainer)
        first_rank, partial_end = self._slice_position(len(prompts), beams, trainer)
        groups = plan_groups(prompts, beams, first_rank, partial_end)
        heads = [prompts[g.start] for g in groups]
        prompt_ids = [self._tokenize(p, trainer) for p in heads]
        excluded = self._exclusions(heads, groups)
        with self._model(trainer) as model:
            eos = self._eos(model)
            results = self._search(model, prompt_ids, excluded, eos, beams)
        return self._assemble(groups, prompt_ids, results, eos)

    # ------------------------------------------------------------------------------ pieces
    def _group_size(self, trainer) -> int:
        """G: `num_beams`, checked against the trainer's group size in its current mode (TRL
        uses `num_generations` in training and `num_generations_eval` in evaluation)."""
        expected, mode = None, "num_generations"
        if trainer is not None:
            training = getattr(getattr(trainer, "model", None), "training", True)
            mode = "num_generations" if training else "num_generations_eval"
            expected = getattr(trainer, mode, None)
        if self.num_beams is None:
            if expected is None:
                raise ValueError("num_beams=None takes the group size from the trainer's num_generations "
                                 "(num_generations_eval in evaluation), but no trainer, or none with it, was passed")
            return int(expected)
        if expected is not None and int(expected) != self.num_beams:
            raise ValueError(f"the trainer's {mode} is {expected} but the rollout has num_beams={self.num_beams}: "
                             "each group of completions is one beam search, so they must be equal "
                             "(num_beams=None follows the trainer)")
        return self.num_beams

    @staticmethod
    def _slice_position(n: int, beams: int, trainer) -> tuple[int, bool]:
        accelerator = getattr(trainer, "accelerator", None)
        processes = int(getattr(accelerator, "num_processes", 1) or 1)
        if processes <= 1:
            return 0, False
        # TRL cuts the repeated batch into equal, consecutive per-process slices.
        return (int(accelerator.process_index) * n) % beams, True

    def _tokenize(self, prompt, trainer) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]
        elif isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
            kwargs = {**(getattr(trainer, "chat_template_kwargs", None) or {}), **self.chat_template_kwargs}
            encoded = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True, **kwargs)
            ids = encoded["input_ids"]
        else:
            raise TypeError(f"a prompt must be a string or a conversation (a list of messages), got "
                            f"{type(prompt).__name__}")
        ids = list(ids)
        if ids and isinstance(ids[0], list):  # a batch of one
            ids = ids[0]
        if self.max_prompt_length is not None:
            ids = ids[-self.max_prompt_length:]  # keep the end: it leads into the completion
        if not ids:
            raise ValueError(f"prompt {prompt!r} tokenizes to no tokens")
        return [int(t) for t in ids]

    def _exclusions(self, heads, groups) -> list[list[int]] | None:
        rule = self.exclude_items
        if rule is None:
            return None
        if callable(rule):
            return [list(rule(p)) for p in heads]
        if isinstance(rule, Mapping):
            out = []
            for prompt, group in zip(heads, groups):
                try:
                    out.append(list(rule[prompt]))
                except (KeyError, TypeError):
                    raise ValueError(f"exclude_items has no entry for prompts[{group.start}] = {prompt!r}") from None
            return out
        items = list(rule)  # the same items for every prompt
        return [items for _ in heads]

    @contextlib.contextmanager
    def _model(self, trainer):
        getter = self.model_or_getter
        if isinstance(getter, torch.nn.Module):
            with _eval_mode(getter):
                yield getter
        elif getter is not None:
            model = getter(trainer)
            with _eval_mode(model):
                yield model
        else:
            if trainer is None:
                raise ValueError("model_or_getter is None (use the trainer's model) but no trainer was passed")
            from trl.models import unwrap_model_for_generation  # optional dependency: imported here only

            args = getattr(trainer, "args", None)
            with unwrap_model_for_generation(
                    getattr(trainer, "model_wrapped", trainer.model), trainer.accelerator,
                    gather_deepspeed3_params=getattr(args, "ds3_gather_for_generation", True),
                    gradient_checkpointing_kwargs=getattr(args, "gradient_checkpointing_kwargs", None),
            ) as model, _eval_mode(model):
                yield model

    def _eos(self, model) -> int:
        config = getattr(model, "generation_config", None)
        for candidate in (self.eos_token_id, self.index.metadata.get("eos_token_id"),
                          getattr(self.tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
            if isinstance(candidate, (list, tuple)):
                candidate = candidate[0] if candidate else None
            if candidate is not None:
                return int(candidate)
        raise ValueError("no eos_token_id: pass one (the token that ends every catalog sequence)")

    def _search(self, model, prompt_ids, excluded, eos, beams) -> list[tuple[list, list, list, list, list[list[int]]]]:
        """Per group: (sequences, lengths, token log-probs, item ids, every item) of its beams."""
        device = next(model.parameters()).device
        pad = getattr(self.tokenizer, "pad_token_id", None)
        pad = eos if pad is None else int(pad)
        chunk = self.prompts_per_call or max(len(prompt_ids), 1)
        results = []
        for lo in range(0, len(prompt_ids), chunk):
            rows = prompt_ids[lo:lo + chunk]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            with torch.no_grad():
                out = beam_search(model, self.index, ids, mask, num_beams=beams,
                                  length_penalty=self.length_penalty, max_new_tokens=self.max_new_tokens,
                                  exclude_items=None if excluded is None else excluded[lo:lo + chunk],
                                  eos_token_id=eos, pad_token_id=pad, backend=self.backend)
            results.extend(_per_prompt(out))
        return results

    def _assemble(self, groups, prompt_ids, results, eos) -> dict[str, list]:
        out = {key: [] for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask", "beam_rank", "item_id",
                                   "all_item_ids")}
        for group, ids, (sequences, lengths, logprobs, item_ids, items) in zip(groups, prompt_ids, results):
            for rank in range(group.first_rank, group.first_rank + group.stop - group.start):
                length = lengths[rank]
                out["prompt_ids"].append(list(ids))
                out["beam_rank"].append(rank)
                out["item_id"].append(item_ids[rank])
                out["all_item_ids"].append(items[rank])
                if length > 0:
                    out["completion_ids"].append(sequences[rank][:length])
                    out["logprobs"].append(logprobs[rank][:length])
                    out["env_mask"].append([1] * length)
                else:  # an empty slot: a masked-out EOS (TRL needs at least one token)
                    out["completion_ids"].append([eos])
                    out["logprobs"].append([0.0])
                    out["env_mask"].append([0])
        return out


def _per_prompt(out: BeamSearchOutput):
    """The search's tensors as Python lists, one tuple per prompt (one host transfer each)."""
    sequences, lengths = out.sequences.tolist(), out.lengths.tolist()
    logprobs, item_ids = out.token_logprobs.tolist(), out.item_ids.tolist()
    offsets, values = out.item_offsets.tolist(), out.item_values.tolist()
    beams = out.lengths.shape[1]
    for p in range(len(lengths)):
        items = [values[offsets[p * beams + g]:offsets[p * beams + g + 1]] for g in range(beams)]
        yield sequences[p], lengths[p], logprobs[p], item_ids[p], items


@contextlib.contextmanager
def _eval_mode(model):
    """Eval mode for the search (no dropout; HF models skip gradient checkpointing, which
    would turn the cache off), restored afterwards: TRL reads `model.training`."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def make_rollout_func(
    model_or_getter,
    index: CatalogIndex,
    tokenizer,
    num_beams: int | None = 16,
    *,
    max_prompt_length: int | None = None,
    length_penalty: float = 0.0,
    exclude_items=None,
    max_new_tokens: int | None = None,
    eos_token_id: int | None = None,
    add_special_tokens: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    prompts_per_call: int | None = None,
    backend: str | None = None,
) -> Callable[..., dict[str, list]]:
    """A `rollout_func` for TRL's `GRPOTrainer`: each group of `num_beams` copies of a prompt
    becomes the `num_beams` best catalog items of one constrained beam search, rank 0 first.

    Args:
        model_or_getter: the policy (an `nn.Module`), a function `getter(trainer) -> model`
            called at every rollout (`trainer` is None outside TRL), or None for the trainer's
            own model, unwrapped with TRL's `unwrap_model_for_generation` (DeepSpeed ZeRO-3
            parameters gathered). The model runs in eval mode and under `no_grad`; its mode is
            restored afterwards.
        index: the catalog index; its sequences end with EOS.
        tokenizer: tokenizes string prompts (`add_special_tokens` as TRL does) and applies the
            chat template to conversations (with the trainer's `chat_template_kwargs`, updated
            by `chat_template_kwargs`).
        num_beams: G, equal to the trainer's `num_generations` (`num_generations_eval` in
            evaluation; checked when a trainer is given); None: whichever the trainer uses.
        max_prompt_length: keep at most this many prompt tokens, cutting from the left.
        length_penalty: HF's (0: scores are sums of log-probs, as in ReRe).
        exclude_items: items never to return, per prompt: a function `f(prompt) -> item ids`,
            a mapping from prompt to item ids (every prompt must be in it), or one list of item
            ids for every prompt.
        max_new_tokens: default, the longest catalog sequence.
        prompts_per_call: at most this many groups per `beam_search` call (default: all).
        backend: `rere.kernels` backend (`None`: Triton on CUDA, torch elsewhere).
    """
    return BeamSearchRollout(model_or_getter, index, tokenizer, num_beams, max_prompt_length=max_prompt_length,
                             length_penalty=length_penalty, exclude_items=exclude_items,
                             max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                             add_special_tokens=add_special_tokens, chat_template_kwargs=chat_template_kwargs,
                             prompts_per_call=prompts_per_call, backend=backend)
