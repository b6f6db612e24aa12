"""RPORec stage 2: GRPO on the reasoning, rewarded by the frozen RecHead's rank of the target.

Per step and prompt (the loop, advantages, prefix-shared update, checkpoints, resume and the
best model on validation are `rere.trainer.grpo_loop.GRPOLoop`'s, as for ReRe):

1. the policy samples G reasonings (`reasoning.generate_reasonings`, temperature / top-p);
2. the encoder, the frozen stage-1 LLM, reads prompt + each reasoning; the frozen head ranks
   the whole catalog from that state (`RecHead.ranks`, chunked) and gives the target's rank;
3. reward = format check x (NDCG of that rank + optional shaping), `rewards.py`;
4. GRPO on the reasoning tokens, log-probs at the sampling temperature.

The encoder stays the stage-1 LLM while the policy learns, so the head keeps reading the
states it was trained on: the policy can only earn reward by writing reasonings that move
those states towards the target. It is the GRPO reference model when there is one (a frozen
copy; with LoRA the adapter-free base), else a frozen copy of the starting model; its digest
must match the head's (`head.json`).
"""
from __future__ import annotations

import contextlib
import copy
import math

import torch

from rere.data.dataset import Dataset
from rere.metrics import ranking_metrics
from rere.rporec.config import Stage2Config
from rere.rporec.encoding import encode_all, pad_id
from rere.rporec.evaluation import check_encoder, recommend
from rere.rporec.reasoning import generate_reasonings, reasoning_prompter, user_sequence
from rere.rporec.rec_head import RecHead
from rere.rporec.rewards import ReasoningGroups, RewardFn, ndcg_of_ranks, rechead_reward
from rere.distributed import Distributed, unwrap
from rere.data.examples import examples_for
from rere.trainer.grpo_loop import GRPOLoop, Rollout
from rere.trainer.rewards import total_reward

VALIDATION_KS = (5, 10)


class Stage2Trainer(GRPOLoop):
    name = "RPORec stage 2"
    panels = (("train", "reward"), ("train", "kl"), ("train", "rollout_ndcg"), ("valid", "ndcg@10"))

    def __init__(self, model, tokenizer, dataset: Dataset, head: RecHead, config: Stage2Config, run_dir, *,
                 rewards: list[RewardFn] | None = None, dist: Distributed | None = None, progress: bool = True):
        if config.fsdp:
            raise ValueError("RPORec stage 2 does not shard the model (fsdp): its frozen encoder is a full copy "
                             "on every rank; use DDP")
        check_encoder(head, model)  # the policy starts as the encoder: the stage-1 LLM
        data = examples_for(dataset, config)
        super().__init__(model, tokenizer, data.train, data.valid, config, run_dir,
                         dist=dist, progress=progress, temperature=config.temperature)
        self.dataset = dataset
        self.prompter = reasoning_prompter(dataset, tokenizer, config.max_prompt_tokens)
        self.head = head.to(self.device).eval().requires_grad_(False)
        self.items = self.head.item_vectors()  # frozen head: the catalog's vectors never change
        self.rewards = rewards if rewards is not None else [rechead_reward(
            ndcg_weight=config.ndcg_weight, ndcg_k=config.ndcg_k, hit_bonus=config.hit_bonus, hit_k=config.hit_k,
            length_cost=config.length_cost, max_new_tokens=config.max_new_tokens,
            format_check=config.format_check)]
        self._own_encoder = None
        if self.reference is None and not config.lora_r:  # beta = 0: no reference to borrow
            self._own_encoder = copy.deepcopy(unwrap(self.model)).requires_grad_(False).eval()

    @property
    def max_completion_length(self) -> int:
        return self.config.max_new_tokens

    def encoder(self):
        """A context giving the frozen stage-1 LLM (see the module doc)."""
        if self._own_encoder is not None:
            return contextlib.nullcontext(self._own_encoder)
        return self.frozen_model()

    def _prompts(self, examples: list) -> list[list[int]]:
        return self.tokenizer([self.prompter.prompt(e.history) for e in examples], add_special_tokens=False)["input_ids"]

    def rollout(self, examples: list) -> Rollout:
        cfg, G = self.config, self.config.num_generations
        prompts = self._prompts(examples)
        generations = []
        with self.autocast():
            for start in range(0, len(prompts), cfg.rollout_batch):
                generations += generate_reasonings(unwrap(self.model), self.tokenizer,
                                                   prompts[start:start + cfg.rollout_batch], num_samples=G,
                                                   max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                                   top_p=cfg.top_p)
        P = len(prompts)
        width = max(len(g.tokens) for gens in generations for g in gens)
        pad = self.tokenizer.pad_token_id or 0
        completions = torch.full((P, G, width), pad, dtype=torch.int64)
        lengths = torch.zeros((P, G), dtype=torch.int64)
        for p, gens in enumerate(generations):
            for g, gen in enumerate(gens):
                completions[p, g, :len(gen.tokens)] = torch.tensor(gen.tokens, dtype=torch.int64)
                lengths[p, g] = len(gen.tokens)
        well_formed = torch.tensor([[gen.parsed.well_formed for gen in gens] for gens in generations])
        targets = torch.tensor([self.dataset.catalog.index_of(e.target) for e in examples])
        ranks = self._catalog_ranks(prompts, generations, targets).view(P, G)
        groups = ReasoningGroups(ranks, well_formed, lengths, targets, [[g.text for g in gens] for gens in generations],
                                 examples)
        ndcg = ndcg_of_ranks(ranks)
        return Rollout([torch.tensor(p, dtype=torch.int64) for p in prompts], completions, lengths,
                       total_reward(groups, self.rewards),
                       {"rollout_ndcg": float(ndcg.mean()), "rollout_hr@10": float((ranks < 10).float().mean()),
                        "best_of_group_ndcg": float(ndcg.max(dim=1).values.mean()),
                        "format_rate": float(well_formed.float().mean())})

    def _catalog_ranks(self, prompts, generations, targets) -> torch.Tensor:
        """int64 [P * G]: the target's rank under the head for each reasoning."""
        eos = self.tokenizer.eos_token_id
        sequences = [user_sequence(p, g, eos) for p, gens in zip(prompts, generations) for g in gens]
        starts = [len(p) for p, gens in zip(prompts, generations) for _ in gens]
        pad = pad_id(self.tokenizer)
        with self.encoder() as encoder, self.autocast():
            states = encode_all(encoder, sequences, starts, pooling=self.head.config.pooling, pad_token_id=pad)
        G = len(generations[0]) if generations else 0
        return self.head.ranks(states.to(self.device), targets.repeat_interleave(G).to(self.device),
                               items=self.items).cpu()

    def validate(self) -> dict | None:
        """Greedy reasoning by the policy on this rank's share of the validation examples,
        full-catalog retrieval by the head; means over ranks weighted by their shares."""
        if not self.valid:
            return None
        shard = self.dist.shard(self.valid)
        keys = [f"{m}@{k}" for k in VALIDATION_KS for m in ("hr", "ndcg")] + ["format_rate"]
        local = dict.fromkeys(keys, 0.0)
        if shard:
            ranked, formed = [], []
            for start in range(0, len(shard), self.config.rollout_batch):
                batch = shard[start:start + self.config.rollout_batch]
                with self.encoder() as encoder:
                    r, _, gens = recommend(unwrap(self.model), encoder, self.tokenizer, self.head, self._prompts(batch),
                                           max(VALIDATION_KS + (self.config.eval_k,)), items=self.items,
                                           max_new_tokens=self.config.max_new_tokens, autocast=self.autocast)
                ranked += r
                formed += [g.parsed.well_formed for g in gens]
            metrics = ranking_metrics(ranked, [self.dataset.catalog.index_of(e.target) for e in shard],
                                      self.dataset.catalog, VALIDATION_KS)
            local = {**{f"{m}@{k}": metrics[f"{m.upper()}@{k}"] for k in VALIDATION_KS for m in ("hr", "ndcg")},
                     "format_rate": sum(formed) / len(formed)}
        count = len(shard)
        means = self.dist.mean({**{k: v * count for k, v in local.items()}, "examples": count})
        return {k: means[k] / means["examples"] if means["examples"] else math.nan for k in keys}
