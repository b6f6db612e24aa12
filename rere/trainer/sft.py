"""Supervised fine-tuning: teach the model to write the next item's completion after the prompt.

The examples come from `rere.data.examples.training_examples` (never a target of the
evaluated split; a seeded sample of `train_examples` of them when set); `sft_data.py`
tokenises them, each completion exactly as the catalog index holds it, and orders them in
length-bucketed batches fixed by (seed, epoch).

Loss: the mean negative log-likelihood over the completion tokens (EOS included) of all the
sequences of an optimizer step, on every rank and in every accumulated micro-batch: each
token weighs the same whatever the length of its sequence or the padding of its batch, as
with Hugging Face's `labels` loss on one big batch. Only the hidden states that predict a
completion token go through the LM head (`rere.kernels.fused_linear_selective_log_softmax`),
so no `[tokens, vocabulary]` logits exist.

Learning rate: AdamW with linear warmup and cosine decay over the run: `epochs`, or
`max_steps` when fewer (the run's length, as in GRPO), so that a capped run still decays
to 0. The default 1e-4 is for full fine-tuning of a ~135M model at batch 8 (1e-4..3e-4 is
the usual range; the ReRe reference recipe uses 3e-4 at batch 128, with its larger batch);
LoRA wants more (3e-4..1e-3).

The run (folder, resume, validation, best/, early stopping, checkpoints, device) is
`rere.trainer.training_run.TrainingRun`'s, as for every trainer here; SFT adds its step and
its validation (`SFTTrainer`). The folder:

    config.yaml                 the configuration
    metrics.jsonl, tensorboard/ every step: loss, lr, grad_norm, epoch, tokens_per_s, s_per_step;
                                each evaluation: hr@k, ndcg@k, invalid_rate (split "valid")
    metrics.png                 train loss and valid ndcg@10 over steps (written at the end)
    checkpoint-NNNNNNN/, latest every `save_every` steps and at the end (rere/trainer/checkpoint.py)
    best/                       the best model on the validation examples (by ndcg@10; the
                                final one without validation examples): a plain Hugging Face
                                folder with the tokenizer, LoRA merged, for `rere evaluate --model`

`resume=True` continues from the latest checkpoint, with the data position {"epoch",
"batch"}, so that an interrupted run ends with the weights of an uninterrupted one. It keeps
the run's settings, `max_steps` and `train_examples` included: only those of validation,
checkpoints and the device may change (`training_run.RESUMABLE`). Under torchrun each rank
takes its own batches (`sft_data.optimizer_steps`) and DDP averages the gradients. Weights
stay float32; `bf16` autocasts the decoder (the default on CUDA).
"""
from __future__ import annotations

import contextlib
import math
import time

import torch
from torch import nn

from rere.data.dataset import Dataset
from rere.data.examples import examples_for
from rere.index.catalog_cache import cached_catalog
from rere.prompts import Prompter, PromptTemplate
from rere.trainer.checkpoint import save_pretrained
from rere.distributed import Distributed, lockstep, no_sync, wrap_model
from rere.trainer.lora import with_lora
from rere.trainer.packed_logprobs import head_logprobs
from rere.trainer.run_settings import BEST_METRIC
from rere.trainer.sft_config import SFTConfig
from rere.trainer.sft_data import batch_order, collate, optimizer_steps, steps_per_epoch, tokenize_examples
from rere.trainer.training_run import TrainingRun
from rere.trainer.validation import validate_on_ranks


class CompletionLoss(nn.Module):
    """`forward(input_ids, attention_mask, labels, scale) -> sum of -log p(label) * scale`
    over the labelled positions (labels as `sft_data.collate` makes them: unshifted, -100
    outside the loss). A module of its own so that DDP wraps the whole computation, decoder
    and LM head; peft models work too (the decoder and head are found through the wrapper)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def warm_up(self) -> torch.Tensor:
        """One forward of a two-token sequence (FSDP's first forward, `distributed.shard`)."""
        device = next(self.model.parameters()).device
        ids = torch.zeros((1, 2), dtype=torch.int64, device=device)
        return self(ids, torch.ones_like(ids), torch.tensor([[-100, 0]], device=device), 0.0)

    def forward(self, input_ids, attention_mask, labels, scale: float) -> torch.Tensor:
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                          use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        scored = targets != -100
        chosen = hidden[:, :-1][scored]  # the states that predict a completion token
        logprobs = head_logprobs(self.model, chosen, targets[scored])
        return -logprobs.sum() * scale


def train_sft(model, tokenizer, dataset: Dataset, config: SFTConfig, run_dir, *, dist: Distributed | None = None,
              resume: bool = False, progress: bool = True, template: PromptTemplate | None = None) -> dict:
    """Fine-tune `model` (in place; wrapped with LoRA adapters when lora_r > 0) on `dataset`
    as the module docstring says. Returns `TrainingRun.train`'s {"steps", "stopped_early",
    "best", "final"} and {"epochs_done", "train_loss" (last step)}."""
    _check(config)
    run = TrainingRun(run_dir, config, dist=dist, progress=progress)
    run.claim_folder(resume)  # before the slow part: tokenising, wrapping the model
    trainer = SFTTrainer(model, tokenizer, dataset, config, run, template)
    result = run.train(trainer, resume)
    return {**result, "epochs_done": trainer.epoch, "train_loss": trainer.loss}


class SFTTrainer:
    """SFT's step and validation for `TrainingRun` (see `training_run.Trainer`)."""

    name, unit = "SFT", "step"
    panels = (("train", "loss"), ("valid", BEST_METRIC))
    shown = {"loss": ".4f", "lr": ".2e"}

    def __init__(self, model, tokenizer, dataset: Dataset, cfg: SFTConfig, run: TrainingRun,
                 template: PromptTemplate | None):
        self.cfg, self.run, self.dist, self.tokenizer, self.catalog = cfg, run, run.dist, tokenizer, dataset.catalog
        if cfg.lora_r:
            model = with_lora(model, cfg)
        self.model = model.to(run.device).train()
        self.prompter, index, self.train, self.valid = _data(dataset, tokenizer, cfg, template,
                                                             model.config.vocab_size, self.dist)
        self.index = index.to(run.device)
        # Arrays over all the examples (properties that rebuild them): taken once, used every step.
        self.lengths, self.completion_lengths = self.train.lengths, self.train.completion_lengths
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.loss_fn = wrap_model(CompletionLoss(model), self.dist, fsdp=cfg.fsdp)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_epoch = steps_per_epoch(-(-len(self.train) // cfg.batch_size), self.dist.world_size, cfg.grad_accum)
        if per_epoch == 0:
            raise ValueError(f"{len(self.train)} training examples make no batch for each of "
                             f"{self.dist.world_size} ranks")
        self.total_steps = cfg.epochs * per_epoch  # the run's steps, which the schedule spans
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        from transformers import get_cosine_schedule_with_warmup
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, math.ceil(cfg.warmup_ratio * self.total_steps),
                                                         self.total_steps)
        self.epoch, self.position = 0, 0  # the next optimizer step's epoch and first batch
        self.loss = math.nan
        self._epoch_steps = None  # this epoch's optimizer steps still to take: [(end, micro-steps)]

    def checkpointed(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}

    def data_state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.position, "examples": len(self.train)}

    def restore(self, step: int, data_state: dict) -> None:
        if data_state.get("examples") != len(self.train):
            raise ValueError(f"the checkpoint of step {step} was trained on {data_state.get('examples')} examples, "
                             f"the data now gives {len(self.train)}: resume on the same dataset")
        self.epoch, self.position = data_state["epoch"], data_state["batch"]

    def step(self) -> dict:
        started = time.perf_counter()
        end, micro_steps, batches = self._next_step()
        local_loss = _accumulate_gradients(self.loss_fn, self.train, micro_steps, self.completion_lengths,
                                           self.dist, self.pad, self.run.autocast)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.cfg.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        epoch = self.epoch + end / batches
        self.position = end
        if not self._epoch_steps:  # the epoch is done: the next step starts the next one
            self.epoch, self.position, self._epoch_steps = self.epoch + 1, 0, None
        self.loss = self.dist.mean({"loss": local_loss})["loss"]
        seconds = time.perf_counter() - started
        tokens = sum(int(self.lengths[b].sum()) for micro in micro_steps for b in micro)
        # tokens_per_s: prompt and completion tokens of all ranks per second of the step.
        return {"loss": self.loss, "lr": lr, "grad_norm": grad_norm, "epoch": epoch, "tokens_per_s": tokens / seconds,
                "s_per_step": seconds}

    def _next_step(self):
        """(batches of the epoch consumed after it, its micro-steps, batches in the epoch) of
        the next optimizer step; an epoch's order is fixed by (seed, epoch)."""
        while not self._epoch_steps:
            if self.epoch >= self.cfg.epochs:
                raise RuntimeError(f"SFT ran out of data after {self.cfg.epochs} epochs")
            self._batches = batch_order(self.lengths, self.cfg.batch_size, self.cfg.seed, self.epoch)
            self._epoch_steps = list(optimizer_steps(self._batches, self.position, self.dist.world_size,
                                                     self.cfg.grad_accum))
            if not self._epoch_steps:
                self.epoch, self.position = self.epoch + 1, 0
        end, micro_steps = self._epoch_steps.pop(0)
        return end, micro_steps, len(self._batches)

    def validate(self) -> dict | None:
        if not self.valid:
            return None
        return validate_on_ranks(self.model, self.tokenizer, self.index, self.catalog, self.prompter, self.valid,
                                 self.dist, num_beams=self.cfg.eval_beams, batch_size=self.cfg.batch_size,
                                 local=lambda: lockstep(self.loss_fn, self.dist))

    def save_best(self) -> None:
        save_pretrained(self.model, self.tokenizer, self.run.best_dir)  # every rank: a sharded model is gathered


def _data(dataset: Dataset, tokenizer, cfg: SFTConfig, template, vocab_size: int, dist: Distributed):
    """(prompter, catalog index, tokenised training examples, validation examples). The
    catalog is tokenised once (`rere.index.catalog_cache`: cached, memory-mapped, shared by
    the ranks) for both the index and the training completions; training uses a seeded
    sample of `train_examples` rows (all by default), validation a fixed random subset of
    `eval_examples` of the early-stopping examples."""
    data = examples_for(dataset, cfg)
    if data.warning and dist.is_main:
        print(f"rere sft: {data.warning}")
    prompter = Prompter(dataset.catalog, dataset.category, template, tokenizer, cfg.max_prompt_tokens)
    cached = cached_catalog(dataset.catalog, tokenizer, template=prompter.completion_format,
                            context=prompter.template.context, vocab_size=vocab_size, dist=dist)
    return prompter, cached.index, tokenize_examples(data.train, prompter, tokenizer, cached.completions), data.valid


def _accumulate_gradients(loss_fn, train, micro_steps, completion_lengths, dist, pad, autocast) -> float:
    """Forward and backward over one optimizer step's micro-batches (this rank's batch of
    each); returns this rank's share of the step's loss. The loss is scaled so that, once DDP
    has averaged the gradients over ranks, they are those of the mean over all the step's
    completion tokens; every rank knows all the step's batches, so counting them needs no
    communication."""
    device = dist.device
    step_tokens = sum(int(completion_lengths[b].sum()) for micro in micro_steps for b in micro)
    total = 0.0
    for m, micro in enumerate(micro_steps):
        batch = {k: v.to(device) for k, v in collate(train, micro[dist.rank], pad).items()}
        sync = m == len(micro_steps) - 1
        with (contextlib.nullcontext() if sync else no_sync(loss_fn)), autocast():
            part = loss_fn(batch["input_ids"], batch["attention_mask"], batch["labels"], dist.world_size / step_tokens)
        part.backward()
        total += float(part.detach())
    return total


def _check(cfg: SFTConfig) -> None:
    for name in ("epochs", "batch_size", "grad_accum", "eval_beams"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"SFTConfig.{name} must be >= 1, got {getattr(cfg, name)}")
