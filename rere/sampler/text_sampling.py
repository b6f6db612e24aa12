"""Free-text sampling with each prompt prefilled once: G completions per prompt, no trie.

For RPORec's reasonings (stage 1's cache, stage 2's rollouts, greedy validation and
evaluation). HF `generate(num_return_sequences=G)` repeats each prompt G times before its
prefill and keeps G copies of its keys and values; here each prompt is prefilled once and
its G rows share its cache (`PromptDecoder`, as `rere.sampler.sample` does under a trie),
so the prefill costs 1/G and every decode step reads the prompt once per prompt.

The distribution is generate's for these arguments: float32 logits through transformers' own
`TemperatureLogitsWarper`, `TopKLogitsWarper` and `TopPLogitsWarper` (generate's order;
a model's generation_config extras, such as a repetition penalty, are not applied),
softmax, one multinomial draw per row (the first step draws the G rows of a prompt from
its one prompt row); greedy (`do_sample=False`) takes the argmax. A row stops at EOS, at a
stop string (transformers' `StopStringCriteria`, over the row's generated tokens), or at
`max_new_tokens`; a stopped row is fed EOS and its outputs are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rere.sampler.kv_cache import PromptDecoder


@dataclass
class TextSamples:
    """Per prompt p and sample g, in draw order."""

    sequences: torch.Tensor  # int64 [P, G, T]: generated tokens, `pad_token_id` after each row's end
    lengths: torch.Tensor  # int64 [P, G]: tokens of each row, its EOS or stop string included
    logprobs: torch.Tensor  # float32 [P, G, T]: log-prob of each token under the distribution it was drawn
    # from (after temperature, top-k, top-p; 0 after the end; with greedy, under the plain softmax)

    def rows(self) -> list[list[list[int]]]:
        """The token lists, per prompt and sample."""
        return [[seq[:n].tolist() for seq, n in zip(seqs, lens.tolist())]
                for seqs, lens in zip(self.sequences, self.lengths)]


@torch.no_grad()
def sample_text(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, num_samples: int = 1,
                max_new_tokens: int = 128, do_sample: bool = True, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                pad_token_id: int = 0, stop_strings: tuple[str, ...] = (), tokenizer=None,
                generator: torch.Generator | None = None) -> TextSamples:
    """`num_samples` completions of each left-padded prompt (`[P, L]`), as the module doc
    says. `tokenizer` is needed for `stop_strings`; `generator` seeds the draws (default:
    torch's global generator). The model runs in the mode it is in (`eval()` for no dropout)."""
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError(f"num_samples and max_new_tokens must be >= 1, got {num_samples}, {max_new_tokens}")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer")
    warp = _warpers(do_sample, temperature, top_k, top_p)
    stop = _stop_criteria(tokenizer, stop_strings)
    n_prompts, device = input_ids.shape[0], input_ids.device
    rows = n_prompts * num_samples
    sequences = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.int64, device=device)
    logprobs = torch.zeros(rows, max_new_tokens, device=device)
    lengths = torch.zeros(rows, dtype=torch.int64, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    feed_when_done = eos_token_id if eos_token_id is not None else pad_token_id

    decoder = PromptDecoder(model, input_ids, attention_mask, max_new_tokens, 0)
    decoder.expand(num_samples)  # each prompt's row becomes its G rows, the prompt's cache shared
    for t in range(max_new_tokens):
        if t == 0:  # the G rows of a prompt share its logits: warp once, draw G times
            scores = warp(sequences[::num_samples, :0], decoder.prompt_logits.float())
            draws = num_samples
        else:
            scores = warp(sequences[:, :t], decoder.step(feed).float())
            draws = 1
        step_logprobs = torch.log_softmax(scores, dim=-1)
        if do_sample:
            tokens = torch.multinomial(step_logprobs.exp(), draws, replacement=True, generator=generator)
        else:
            tokens = step_logprobs.argmax(-1, keepdim=True).expand(-1, draws)
        token_logprobs = step_logprobs.gather(1, tokens)
        tokens, token_logprobs = tokens.reshape(-1), token_logprobs.reshape(-1)
        live = ~done
        sequences[:, t] = torch.where(live, tokens, pad_token_id)
        logprobs[:, t] = torch.where(live, token_logprobs, 0.0)
        lengths += live.long()
        ended = tokens == eos_token_id if eos_token_id is not None else torch.zeros_like(done)
        if stop is not None:
            ended |= stop(sequences[:, :t + 1], scores).to(device)
        done |= live & ended
        if bool(done.all()):  # one host synchronisation per step, to stop early
            break
        feed = torch.where(done, feed_when_done, tokens)
    shape = (n_prompts, num_samples)
    return TextSamples(sequences.reshape(shape + (-1,)), lengths.reshape(shape), logprobs.reshape(shape + (-1,)))


def _warpers(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None):
    """generate's logits warpers, in its order (greedy: none; the argmax does not move)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if do_sample:
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _stop_criteria(tokenizer, stop_strings: tuple[str, ...]):
    if not stop_strings:
        return None
    from transformers import StopStringCriteria

    return StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings))
