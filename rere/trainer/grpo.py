"""ReRe: GRPO whose rollouts are constrained beam search and whose reward ranks hard negatives.

One step, on every rank for its share of `prompts_per_step` prompts (the loop, the update,
checkpoints and validation are `grpo_loop.GRPOLoop`'s):

1. rollout: `rere.sampler.beam_search` with num_beams = G over the catalog trie (or
   `rere.sampler.sample`, G independent draws, for comparison), the model in eval mode;
2. rewards (`rewards.py`: rule + ranking by default, any callables);
3. the loop's group advantages and prefix-shared update.

Validation ranks held-out examples by beam search, as `rere evaluate` does.
"""
from __future__ import annotations

import torch

from rere.data.dataset import Dataset
from rere.index.catalog_cache import cached_catalog
from rere.prompts import Prompter, PromptTemplate
from rere.sampler import beam_search, left_pad, sample
from rere.distributed import Distributed, unwrap
from rere.data.examples import examples_for
from rere.trainer.grpo_config import GRPOConfig
from rere.trainer.grpo_loop import GRPOLoop, Rollout, concat_padded
from rere.trainer.rewards import REWARDS, Groups, RewardFn, total_reward
from rere.trainer.validation import validate_on_ranks


class GRPOTrainer(GRPOLoop):
    """ReRe training of `model` on `dataset`; `run()` does the steps, `step()` one of them."""

    name = "ReRe GRPO"

    def __init__(self, model, tokenizer, dataset: Dataset, config: GRPOConfig, run_dir, *,
                 rewards: list[RewardFn] | None = None, dist: Distributed | None = None,
                 template: PromptTemplate | None = None, progress: bool = True):
        if config.rollout not in ("beam", "sample"):
            raise ValueError(f'rollout must be "beam" or "sample", got {config.rollout!r}')
        unknown = [r for r in config.rewards if r not in REWARDS]
        if unknown and rewards is None:
            raise ValueError(f"unknown reward(s) {unknown}: choose from {sorted(REWARDS)} or pass callables")
        self.rewards = rewards if rewards is not None else [REWARDS[r] for r in config.rewards]
        data = examples_for(dataset, config)
        super().__init__(model, tokenizer, data.train, data.valid, config, run_dir, dist=dist, progress=progress,
                         temperature=config.temperature if config.rollout == "sample" else 1.0)
        self.dataset = dataset
        self.prompter = Prompter(dataset.catalog, dataset.category, template, tokenizer, config.max_prompt_tokens)
        self.index = cached_catalog(dataset.catalog, tokenizer, template=self.prompter.completion_format,
                                    context=self.prompter.template.context, vocab_size=self.model.config.vocab_size,
                                    dist=self.dist).index.to(self.device)

    @property
    def max_completion_length(self) -> int:
        return self.index.max_depth

    def rollout(self, examples: list) -> Rollout:
        """Beam search (or sampling) over the catalog for each prompt, then the rewards."""
        cfg, model = self.config, unwrap(self.model)
        prompts = [torch.tensor(self.tokenizer(self.prompter.prompt(e.history), add_special_tokens=False)["input_ids"])
                   for e in examples]
        outputs = []
        model.eval()
        with torch.no_grad(), self.autocast(), self.lockstep():
            for start in range(0, len(prompts), cfg.rollout_batch):
                ids, mask = left_pad(prompts[start:start + cfg.rollout_batch])
                exclude = None
                if cfg.exclude_history:
                    exclude = [[self.dataset.catalog.index_of(h) for h in e.history]
                               for e in examples[start:start + cfg.rollout_batch]]
                if cfg.rollout == "beam":
                    out = beam_search(model, self.index, ids.to(self.device), mask.to(self.device),
                                      num_beams=cfg.num_generations, exclude_items=exclude,
                                      pad_token_id=self.tokenizer.pad_token_id)
                else:
                    out = sample(model, self.index, ids.to(self.device), mask.to(self.device),
                                 num_samples=cfg.num_generations, temperature=cfg.temperature, exclude_items=exclude,
                                 pad_token_id=self.tokenizer.pad_token_id)
                outputs.append(out)
        model.train()
        targets = torch.tensor([self.dataset.catalog.index_of(e.target) for e in examples])
        groups = [Groups.from_rollout(out, targets[i:i + out.lengths.shape[0]], examples[i:i + out.lengths.shape[0]])
                  for i, out in zip(range(0, len(examples), cfg.rollout_batch), outputs)]
        hits = torch.cat([g.hits & g.valid for g in groups])
        return Rollout(prompts, concat_padded([o.sequences.cpu() for o in outputs], self.tokenizer.pad_token_id or 0),
                       torch.cat([o.lengths.cpu() for o in outputs]),
                       torch.cat([total_reward(g, self.rewards) for g in groups]),
                       {"in_group_hit_rate": float(hits.any(1).float().mean()), "hit@1": float(hits[:, 0].float().mean())})

    def validate(self) -> dict | None:
        if not self.valid:
            return None
        return validate_on_ranks(self.model, self.tokenizer, self.index, self.dataset.catalog, self.prompter,
                                 self.valid, self.dist, num_beams=self.config.eval_beams, local=self.lockstep)
