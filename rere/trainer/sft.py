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

The run folder:

    config.yaml                 the configuration
    metrics.jsonl, tensorboard/ every step: loss, lr, grad_norm, epoch, tokens_per_s, s_per_step;
                                each evaluation: hr@k, ndcg@k, invalid_rate (split "valid")
    metrics.png                 train loss and valid ndcg@10 over steps (written at the end)
    checkpoint-NNNNNNN/, latest every `save_every` steps and at the end (rere/trainer/checkpoint.py)
    best/                       the best model on the validation examples (by ndcg@10; the
                                final one without validation examples): a plain Hugging Face
                                folder with the tokenizer, LoRA merged, for `rere evaluate --model`

`resume=True` continues from the latest checkpoint: weights, optimizer, schedule, random
generators, and the data position {"epoch", "batch"}, so that an interrupted run ends with
the weights of an uninterrupted one (a folder without a checkpoint starts over). It keeps
the run's settings, `max_steps` and `train_examples` included: only those of validation,
checkpoints and the device may change (`_RESUMABLE_CHANGES`). Under torchrun each rank
takes its own batches (`sft_data.optimizer_steps`) and DDP averages the gradients. Weights
stay float32; `bf16` autocasts the decoder (the default on CUDA).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from rere.data.dataset import Dataset, sample_examples
from rere.index import CatalogIndex
from rere.prompts import Prompter, PromptTemplate
from rere.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_pretrained
from rere.trainer.config import config_to_dict, save_config
from rere.trainer.distributed import Distributed, lockstep, no_sync, wrap_model
from rere.data.examples import train_sample, training_examples
from rere.trainer.lora import with_lora
from rere.trainer.metrics_log import MetricsLog, plot_metrics
from rere.trainer.packed_logprobs import head_logprobs
from rere.trainer.sft_config import BEST_METRIC, SFTConfig
from rere.trainer.sft_data import batch_order, collate, optimizer_steps, steps_per_epoch, tokenize_examples
from rere.trainer.validation import record_validation, validate_on_ranks

# Fields that may change when resuming: they do not alter the weights a step produces
# (max_steps does: it sets the schedule's length).
_RESUMABLE_CHANGES = ("eval_every", "eval_examples", "eval_beams", "patience", "save_every", "keep_checkpoints",
                      "device")


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
    as the module docstring says. Returns {"steps", "epochs_done", "stopped_early",
    "train_loss" (last step), "best": {"step", metrics...} or None, "final": last validation
    metrics or None}."""
    cfg = config
    _check(cfg)
    run_dir = Path(run_dir)
    dist = dist or Distributed(device=torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    device = dist.device
    checkpoint = latest_checkpoint(run_dir)
    if not resume and (checkpoint is not None or (run_dir / "metrics.jsonl").exists()):
        raise FileExistsError(f"{run_dir} holds a training run: resume it (--resume) or choose another folder")
    dist.barrier()  # every rank has looked at the folder before rank 0 writes into it
    torch.manual_seed(cfg.seed)  # LoRA's initialisation
    if cfg.lora_r:
        model = with_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    model.to(device).train()

    prompter, index, train, valid = _data(dataset, tokenizer, cfg, template, model.config.vocab_size, dist.is_main)
    index = index.to(device)
    lengths, completion_lengths = train.lengths, train.completion_lengths
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    loss_fn = wrap_model(CompletionLoss(model), dist, fsdp=cfg.fsdp)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = steps_per_epoch(-(-len(train) // cfg.batch_size), dist.world_size, cfg.grad_accum)
    if per_epoch == 0:
        raise ValueError(f"{len(train)} training examples make no batch for each of {dist.world_size} ranks")
    total = cfg.epochs * per_epoch  # the run's steps, which the schedule spans
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    from transformers import get_cosine_schedule_with_warmup
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total), total)

    step, epoch, position = 0, 0, 0
    state = {"best": None, "bad_evals": 0, "stopped_early": False, "evaluated": -1, "final": None}
    saved = -1
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
        _check_resumable(loaded["config"], cfg, loaded["data_state"], len(train), checkpoint)
        step = saved = loaded["step"]
        epoch, position = loaded["data_state"]["epoch"], loaded["data_state"]["batch"]
        state.update(loaded["extra"])
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    # Resuming drops what the interrupted run logged after its checkpoint (everything, without one).
    log = MetricsLog(run_dir, enabled=dist.is_main, resume_step=step if resume else None)
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    bar = tqdm(total=total, initial=min(step, total), desc="SFT", unit="step", disable=not (progress and dist.is_main))

    def evaluate_now() -> None:
        metrics = validate_on_ranks(model, tokenizer, index, dataset.catalog, prompter, valid, dist, num_beams=cfg.eval_beams,
                                    batch_size=cfg.batch_size, local=lambda: lockstep(loss_fn, dist))
        log.log(step, metrics, split="valid")
        state["evaluated"], state["final"] = step, metrics
        if record_validation(state, metrics, {"step": step}, cfg.patience, BEST_METRIC):
            save_pretrained(model, tokenizer, run_dir / "best")  # every rank: a sharded model is gathered

    def save() -> None:
        save_checkpoint(run_dir, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                        data_state={"epoch": epoch, "batch": position, "examples": len(train)},
                        config=config_to_dict(cfg), extra=state, keep=cfg.keep_checkpoints)

    loss = math.nan

    def finished() -> bool:
        return step >= total or state["stopped_early"]

    while epoch < cfg.epochs and not finished():
        batches = batch_order(lengths, cfg.batch_size, cfg.seed, epoch)
        for end, micro_steps in optimizer_steps(batches, position, dist.world_size, cfg.grad_accum):
            if finished():  # checked before a step, so that an epoch's last step still ends the epoch below
                break
            started = time.perf_counter()
            local_loss = _accumulate_gradients(loss_fn, train, micro_steps, completion_lengths, dist, pad, use_bf16)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, position = step + 1, end
            loss = dist.mean({"loss": local_loss})["loss"]
            seconds = time.perf_counter() - started
            tokens = sum(int(lengths[b].sum()) for micro in micro_steps for b in micro)
            # tokens_per_s: prompt and completion tokens of all ranks per second of the step.
            log.log(step, {"loss": loss, "lr": lr, "grad_norm": grad_norm, "epoch": epoch + position / len(batches),
                           "tokens_per_s": tokens / seconds, "s_per_step": seconds})
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if valid and cfg.eval_every and step % cfg.eval_every == 0:
                evaluate_now()
            if step % cfg.save_every == 0:
                save()
                saved = step
        else:
            epoch, position = epoch + 1, 0
    bar.close()

    if valid and state["evaluated"] != step:
        evaluate_now()
    if saved != step:
        save()
    if not valid:
        save_pretrained(model, tokenizer, run_dir / "best")
    dist.barrier()
    log.close()
    if dist.is_main:
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "metrics.png", panels=(("train", "loss"), ("valid", BEST_METRIC)))
    return {"steps": step, "epochs_done": epoch, "stopped_early": state["stopped_early"], "train_loss": loss,
            "best": state["best"], "final": state["final"]}


def _data(dataset: Dataset, tokenizer, cfg: SFTConfig, template, vocab_size: int, verbose: bool):
    """(prompter, catalog index, tokenised training examples, validation examples). The
    catalog is tokenised once, for both the index and the training completions; training
    uses a seeded sample of `train_examples` rows (all by default), validation a fixed random
    subset of `eval_examples` of the early-stopping examples."""
    data = training_examples(dataset, cfg.evaluated_split, cfg.max_history)
    if data.warning and verbose:
        print(f"rere sft: {data.warning}")
    prompter = Prompter(dataset.catalog, dataset.category, template, tokenizer, cfg.max_prompt_tokens)
    completions = dataset.catalog.tokenize(tokenizer, template=prompter.completion_format,
                                           context=prompter.template.context)
    index = CatalogIndex.from_flat(completions.tokens, completions.offsets, vocab_size=vocab_size,
                                   metadata={"eos_token_id": completions.eos_token_id})
    train = tokenize_examples(train_sample(data.train, cfg.train_examples, cfg.seed), prompter, tokenizer, completions)
    return prompter, index, train, sample_examples(data.valid, cfg.eval_examples, cfg.seed)


def _accumulate_gradients(loss_fn, train, micro_steps, completion_lengths, dist, pad, use_bf16) -> float:
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
        with (contextlib.nullcontext() if sync else no_sync(loss_fn)), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            part = loss_fn(batch["input_ids"], batch["attention_mask"], batch["labels"], dist.world_size / step_tokens)
        part.backward()
        total += float(part.detach())
    return total


def _check(cfg: SFTConfig) -> None:
    for name in ("epochs", "batch_size", "grad_accum", "eval_beams", "save_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"SFTConfig.{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "eval_examples", "patience", "lora_r"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"SFTConfig.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"SFTConfig.max_steps must be >= 1 or None, got {cfg.max_steps}")
    if cfg.fsdp and cfg.lora_r:
        raise ValueError("SFTConfig: fsdp and lora_r together are not supported: LoRA trains few weights, use DDP")


def _check_resumable(saved: dict | None, cfg: SFTConfig, data_state: dict, examples: int, checkpoint: Path) -> None:
    """Resuming with other settings would not continue the same run: refuse, naming them."""
    now = config_to_dict(cfg)
    changed = sorted(f.name for f in dataclasses.fields(cfg)
                     if f.name not in _RESUMABLE_CHANGES and (saved or {}).get(f.name) != now[f.name])
    if changed:
        raise ValueError(f"{checkpoint} was trained with other settings ({', '.join(changed)} differ); "
                         f"resume with its config.yaml or start another run folder")
    if data_state.get("examples") != examples:
        raise ValueError(f"{checkpoint} was trained on {data_state.get('examples')} examples, the data now gives "
                         f"{examples}: resume on the same dataset")
