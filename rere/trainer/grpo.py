"""ReRe: GRPO whose rollouts are constrained beam search and whose reward ranks hard negatives.

One step, on every rank for its share of `prompts_per_step` prompts:

1. rollout: `rere.sampler.beam_search` with num_beams = G over the catalog trie (or
   `rere.sampler.sample`, G independent draws, for comparison), the model in eval mode;
2. rewards (`rewards.py`: rule + ranking by default, any callables) and group advantages;
3. update: the groups packed with their prompt once (`packed_logprobs.py`), the reference
   (and, with several passes, the old policy) scored without gradient the same way, then
   `num_iterations` optimizer steps over the same rollouts, micro-batch by micro-batch
   (`grpo_loss.py`).

Checkpoints, metrics, validation and resume follow SFT (`sft.py`): the same run folder.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rere.data.dataset import Dataset
from rere.index import CatalogIndex
from rere.prompts import Prompter, PromptTemplate
from rere.sampler import beam_search, left_pad, sample
from rere.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_pretrained
from rere.trainer.config import config_to_dict, save_config
from rere.trainer.distributed import Distributed, no_sync, unwrap, wrap_model
from rere.trainer.examples import training_examples
from rere.trainer.grpo_loss import LOSS_TYPES, grpo_loss
from rere.trainer.metrics_log import MetricsLog, plot_metrics
from rere.trainer.packed_logprobs import CompletionScorer, pack_groups
from rere.trainer.grpo_config import GRPOConfig
from rere.trainer.rewards import REWARDS, Groups, RewardFn, group_advantages, total_reward
from rere.trainer.validation import validate_on_ranks


class GRPOTrainer:
    """ReRe training of `model` on `dataset`; `run()` does the steps, `step()` one of them."""

    def __init__(self, model, tokenizer, dataset: Dataset, config: GRPOConfig, run_dir, *,
                 rewards: list[RewardFn] | None = None, dist: Distributed | None = None,
                 template: PromptTemplate | None = None, progress: bool = True):
        self.config, self.dist, self.tokenizer = config, dist or Distributed(), tokenizer
        self.run_dir, self.progress = Path(run_dir), progress and self.dist.is_main
        if config.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {config.loss_type!r}")
        if config.rollout not in ("beam", "sample"):
            raise ValueError(f'rollout must be "beam" or "sample", got {config.rollout!r}')
        unknown = [r for r in config.rewards if r not in REWARDS]
        if unknown and rewards is None:
            raise ValueError(f"unknown reward(s) {unknown}: choose from {sorted(REWARDS)} or pass callables")
        self.rewards = rewards if rewards is not None else [REWARDS[r] for r in config.rewards]
        torch.manual_seed(config.seed)
        self.device = self.dist.device
        # fp32 weights, bf16 autocast: AdamW's 1e-5-sized updates would round away in bf16 weights.
        self.use_bf16 = config.bf16 if config.bf16 is not None else self.device.type == "cuda"
        if config.lora_r:
            from peft import LoraConfig, get_peft_model
            model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
        self.model = model.to(self.device)
        self.dataset = dataset
        data = training_examples(dataset, config.evaluated_split, config.max_history)
        self.examples, self.valid = data.train, data.valid[: config.eval_examples]
        self.prompter = Prompter(dataset.catalog, dataset.category, template, tokenizer, config.max_prompt_tokens)
        self.index = CatalogIndex.from_catalog(dataset.catalog, tokenizer, template=self.prompter.completion_format,
                                               context=self.prompter.template.context,
                                               vocab_size=model.config.vocab_size).to(self.device)
        self.policy = wrap_model(CompletionScorer(self.model, self._temperature), self.dist)
        self.reference = None
        if config.beta and not config.lora_r:
            self.reference = CompletionScorer(copy.deepcopy(unwrap(self.model)).requires_grad_(False).eval(),
                                              self._temperature)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=config.lr,
                                           weight_decay=config.weight_decay)
        from transformers import get_cosine_schedule_with_warmup
        updates = self.total_steps * config.num_iterations
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, math.ceil(config.warmup_ratio * updates), updates)
        self.step_index, self.best = 0, {"ndcg@10": -1.0, "step": 0}
        self.log = None

    @property
    def _temperature(self) -> float:
        return self.config.temperature if self.config.rollout == "sample" else 1.0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.examples) // self.config.prompts_per_step)

    @property
    def total_steps(self) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        return max(1, int(self.config.epochs * self.steps_per_epoch))

    # -- data --------------------------------------------------------------------------------

    def step_examples(self, step: int) -> list:
        """This rank's prompts of step `step`: epoch e's order is a permutation seeded by
        (seed, e), so a resumed run sees the same prompts as an uninterrupted one."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = list(range(len(self.examples)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        size = self.config.prompts_per_step
        chosen = [self.examples[i] for i in order[position * size:(position + 1) * size]]
        return self.dist.shard(chosen)

    # -- one step -----------------------------------------------------------------------------

    def rollout(self, examples: list):
        """Token ids of each prompt and the sampler's output over G items per prompt."""
        cfg, model = self.config, unwrap(self.model)
        prompts = [torch.tensor(self.tokenizer(self.prompter.prompt(e.history), add_special_tokens=False)["input_ids"])
                   for e in examples]
        outputs = []
        model.eval()
        with torch.no_grad(), self._autocast():
            for start in range(0, len(prompts), cfg.rollout_batch):
                chunk = prompts[start:start + cfg.rollout_batch]
                ids, mask = left_pad(chunk)
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
        return prompts, outputs

    def step(self) -> dict:
        cfg = self.config
        examples = self.step_examples(self.step_index)
        started = time.perf_counter()
        prompts, outputs = self.rollout(examples)
        rollout_s = time.perf_counter() - started
        catalog = self.dataset.catalog
        targets = torch.tensor([catalog.index_of(e.target) for e in examples])
        groups = [Groups.from_rollout(out, targets[i:i + out.lengths.shape[0]], examples[i:i + out.lengths.shape[0]])
                  for i, out in zip(range(0, len(examples), cfg.rollout_batch), outputs)]
        rewards = torch.cat([total_reward(g, self.rewards) for g in groups])
        valid = torch.cat([g.valid for g in groups])
        hits = torch.cat([g.hits & g.valid for g in groups])
        advantages = group_advantages(rewards, valid)
        completions = _concat_padded([o.sequences.cpu() for o in outputs], self.tokenizer.pad_token_id or 0)
        lengths = torch.cat([o.lengths.cpu() for o in outputs])

        lr = self.scheduler.get_last_lr()[0]  # the rate this step's update uses
        started = time.perf_counter()
        update = self._update(prompts, completions, lengths, advantages)
        update_s = time.perf_counter() - started
        metrics = {
            "reward": float(rewards[valid].mean()), "reward_std": float(rewards[valid].std()) if valid.sum() > 1 else 0.0,
            "in_group_hit_rate": float(hits.any(1).float().mean()), "hit@1": float(hits[:, 0].float().mean()),
            "completion_length": float(lengths[valid].float().mean()), "lr": lr,
            "rollout_s": rollout_s, "update_s": update_s, **update,
        }
        self.step_index += 1
        return self.dist.mean(metrics)

    def _update(self, prompts, completions, lengths, advantages) -> dict:
        cfg = self.config
        pad = self.tokenizer.pad_token_id or 0
        chunks = []  # (packed batch, advantages of its completions)
        for start in range(0, len(prompts), cfg.micro_batch):
            stop = start + cfg.micro_batch
            packed = pack_groups(prompts[start:stop], completions[start:stop], lengths[start:stop], pad_token_id=pad,
                                 share_prompt=cfg.prefix_sharing).to(self.device)
            chunks.append((packed, advantages[start:stop].reshape(-1)))
        with torch.no_grad(), self._autocast():
            refs = [self._reference_logprobs(p) for p, _ in chunks] if cfg.beta else [None] * len(chunks)
            olds = [self.policy(p).detach() for p, _ in chunks] if cfg.num_iterations > 1 else [None] * len(chunks)
        sequences = int((lengths > 0).sum())
        tokens = int(lengths.sum())
        tokens_in_step = int(self.dist.sum(tokens))
        totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0}
        scale_dapo = self.dist.world_size  # DDP averages gradients over ranks; dapo's denominator is global
        for _ in range(cfg.num_iterations):
            for i, ((packed, adv), ref, old) in enumerate(zip(chunks, refs, olds)):
                sync = i == len(chunks) - 1
                with (contextlib.nullcontext() if sync else no_sync(self.policy)), self._autocast():
                    logprobs = self.policy(packed)
                    parts = grpo_loss(logprobs, packed.sequence, adv, old_logprobs=old, ref_logprobs=ref,
                                      beta=cfg.beta, epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
                                      loss_type=cfg.loss_type, num_sequences=sequences,
                                      max_completion_length=self.index.max_depth, tokens_in_step=tokens_in_step)
                    loss = parts.loss * (scale_dapo if cfg.loss_type == "dapo" else 1)
                    if cfg.loss_type in ("bnpo", "dr_grpo"):
                        loss = loss / len(chunks)
                    loss.backward()
                weight = parts.tokens / max(tokens, 1)
                totals["loss"] += parts.loss.item() / cfg.num_iterations
                totals["kl"] += parts.kl * weight / cfg.num_iterations
                totals["clip_fraction"] += parts.clip_fraction * weight / cfg.num_iterations
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            totals["grad_norm"] += float(norm) / cfg.num_iterations
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._maybe_sync_reference()
        totals["tokens"] = tokens
        return totals

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def _reference_logprobs(self, packed):
        if self.reference is not None:
            return self.reference(packed)
        with unwrap(self.model).disable_adapter():  # LoRA: the base model is the reference
            return unwrap(self.policy)(packed)

    def _maybe_sync_reference(self) -> None:
        cfg = self.config
        if self.reference is None or not cfg.ref_sync_every or (self.step_index + 1) % cfg.ref_sync_every:
            return
        with torch.no_grad():
            for ref, cur in zip(self.reference.model.parameters(), unwrap(self.model).parameters()):
                ref.mul_(1 - cfg.ref_sync_alpha).add_(cur.detach().to(ref.dtype), alpha=cfg.ref_sync_alpha)

    # -- the run ------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict:
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and (latest_checkpoint(self.run_dir) is not None or (self.run_dir / "metrics.jsonl").exists()):
            raise FileExistsError(f"{self.run_dir} holds a training run: resume it (--resume) or choose another folder")
        if resume and latest_checkpoint(self.run_dir) is None:
            raise FileNotFoundError(f"resume: {self.run_dir} has no checkpoint to continue from")
        if resume:
            state = load_checkpoint(self.run_dir, model=unwrap(self.model), optimizer=self.optimizer,
                                    scheduler=self.scheduler, extra_models=self._drifting_reference())
            self.step_index = state["step"]
            self.best = state["extra"].get("best", self.best)
        if self.dist.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        self.log = MetricsLog(self.run_dir, enabled=self.dist.is_main, resume_step=self.step_index if resume else None)
        bar = tqdm(total=self.total_steps, initial=self.step_index, desc="ReRe GRPO", unit="step",
                   disable=not self.progress)
        while self.step_index < self.total_steps:
            metrics = self.step()
            self.log.log(self.step_index, metrics, split="train")
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", hit=f"{metrics['in_group_hit_rate']:.2f}",
                            kl=f"{metrics['kl']:.2e}")
            bar.update(1)
            last = self.step_index == self.total_steps
            if (cfg.eval_every and self.step_index % cfg.eval_every == 0) or last:
                self._validate()
            if self.step_index % cfg.save_every == 0 or last:
                self._save()
        bar.close()
        self.log.close()
        if self.dist.is_main:
            plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "metrics.png")
        return {"steps": self.step_index, "best": self.best}

    def _validate(self) -> None:
        if not self.valid:
            return
        metrics = validate_on_ranks(self.model, self.tokenizer, self.index, self.dataset.catalog, self.prompter,
                                    self.valid, self.dist, num_beams=self.config.eval_beams)
        self.log.log(self.step_index, metrics, split="valid")
        if metrics.get("ndcg@10", -1.0) > self.best["ndcg@10"]:
            self.best = {"ndcg@10": metrics["ndcg@10"], "step": self.step_index}
            if self.dist.is_main:
                save_pretrained(unwrap(self.model), self.tokenizer, self.run_dir / "best")

    def _save(self) -> None:
        save_checkpoint(self.run_dir, step=self.step_index, model=unwrap(self.model), optimizer=self.optimizer,
                               scheduler=self.scheduler, data_state={"step": self.step_index},
                               config=config_to_dict(self.config), extra={"best": self.best},
                               extra_models=self._drifting_reference(), keep=self.config.keep_checkpoints)

    def _drifting_reference(self) -> dict:
        """The reference must be checkpointed only when soft syncs move it away from --model."""
        if self.reference is not None and self.config.ref_sync_every:
            return {"reference": self.reference.model}
        return {}


def _concat_padded(parts: list[torch.Tensor], pad: int) -> torch.Tensor:
    """[P_i, G, T_i] tensors -> [sum P_i, G, max T_i]."""
    width = max(p.shape[2] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[2]), value=pad) for p in parts])
