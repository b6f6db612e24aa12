"""RPORec stage 1: reason once about every training user, then train the RecHead on it.

1. Reasoning: the LLM writes its reasoning for each training and validation prompt
   (`reasoning.py`: sampled once, cached in RUN/reasonings/, resumable).
2. Item encodings: the LLM encodes every item's title (`encoding.encode_items`), cached in
   RUN/item_encodings.safetensors with digests of the catalog and the LLM.
3. User states: the LLM's pooled state of prompt + reasoning. With a frozen LLM (the
   default) they are computed once (RUN/user_states-*.safetensors) and the head trains on
   them at the speed of a small MLP; with `lora_r` > 0 the LLM gets LoRA adapters, trained
   with the head, every batch runs the LLM with gradient, and the item encodings are
   recomputed (without gradient) after every epoch.
4. Training: sampled-softmax cross-entropy. A batch's scores are its B user vectors against
   B + R items: the batch's own targets (in-batch negatives for each other) and R items drawn
   uniformly from the catalog; a candidate with the target's identifier (the target itself,
   or an item of the same title) is masked out of the negatives. AdamW, one checkpoint per
   epoch (head, optimizer, RNGs, the adapters with LoRA), an exact `resume`.
5. Validation: full-catalog retrieval of the validation users (`RecHead.recommend`, chunked,
   nothing [users, items]-sized), HR/NDCG with `rere.metrics`; the best head by NDCG@10 goes
   to RUN/head/ (with LoRA, the merged LLM it reads goes to RUN/llm/), early stopping.

The run folder's head is what `rere rporec stage2 --head` and `rere evaluate --method rporec
--head` read; its head.json names the LLM that encodes for it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rere.data.dataset import Dataset
from rere.data.examples import examples_for
from rere.files import write_atomically, write_json
from rere.metrics import identifier_groups, ranking_metrics
from rere.rporec.config import Stage1Config
from rere.rporec.encoding import encode_all, encode_batch, encode_items, model_fingerprint, pad_id
from rere.rporec.reasoning import ReasoningCache, reasoning_prompter, user_sequence
from rere.rporec.rec_head import RecHead, RecHeadConfig
from rere.trainer.checkpoint import save_pretrained
from rere.trainer.lora import with_lora
from rere.trainer.training_run import RESUMABLE, TrainingRun

PANELS = (("train", "loss"), ("valid", "ndcg@10"), ("valid", "hr@10"), ("train", "format_rate"))
VALIDATION_KS = (5, 10, 20, 50)


@dataclasses.dataclass
class UserTexts:
    """One split's examples as the head reads them."""

    examples: list
    sequences: list[list[int]]  # prompt + reasoning token ids (user_sequence)
    starts: list[int]  # where the reasoning begins ("mean" pooling averages from there)
    targets: torch.Tensor  # int64 [n] catalog positions
    well_formed: float  # share of well-formed reasonings (nan without reasoning)


def build_user_texts(model, tokenizer, dataset: Dataset, examples: list, cfg: Stage1Config, folder: Path,
                     *, do_sample: bool, progress: bool, desc: str) -> UserTexts:
    """Prompts, their reasoning (cached in `folder`) and the sequences the head reads."""
    prompter = reasoning_prompter(dataset, tokenizer, cfg.max_prompt_tokens)
    prompts = tokenizer([prompter.prompt(e.history) for e in examples], add_special_tokens=False)["input_ids"]
    targets = torch.tensor([dataset.catalog.index_of(e.target) for e in examples], dtype=torch.int64)
    if not cfg.reasoning:
        return UserTexts(examples, prompts, [0] * len(prompts), targets, math.nan)
    generation = {"max_new_tokens": cfg.max_new_tokens, "do_sample": do_sample and cfg.reasoning_temperature > 0,
                  "temperature": cfg.reasoning_temperature, "top_p": cfg.top_p}
    settings = {"model": model_fingerprint(model), "examples": [e.user for e in examples],
                "batch": cfg.generation_batch, "seed": cfg.seed, "max_prompt_tokens": cfg.max_prompt_tokens,
                **generation}
    generations = ReasoningCache(folder, settings).fill(model, tokenizer, examples, prompts,
                                                        batch_size=cfg.generation_batch, progress=progress,
                                                        desc=desc, generator_seed=cfg.seed, **generation)
    eos = tokenizer.eos_token_id
    sequences = [user_sequence(p, g[0], eos) for p, g in zip(prompts, generations)]
    formed = sum(g[0].parsed.well_formed for g in generations) / max(1, len(generations))
    return UserTexts(examples, sequences, [len(p) for p in prompts], targets, formed)


def sampled_softmax_loss(head: RecHead, users: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                         groups: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each user's target against the batch's targets and `negatives`.

    users: [B, dim] unit vectors; targets: [B]; negatives: [R] item indices; groups: [N]
    identifier group of every item (equal titles, equal group), for masking accidental hits."""
    candidates = torch.cat([targets, negatives])
    logits = head.logits(users, head.item_vectors(candidates))
    same = groups[candidates][None, :] == groups[targets][:, None]
    own = torch.zeros_like(same)
    own[torch.arange(len(targets)), torch.arange(len(targets))] = True
    logits = logits.masked_fill(same & ~own, -torch.inf)
    return F.cross_entropy(logits, torch.arange(len(targets), device=logits.device))


def head_metrics(head: RecHead, states: torch.Tensor, targets: torch.Tensor, catalog, *, k: int = 50,
                 batch_size: int = 256) -> dict[str, float]:
    """"hr@k"/"ndcg@k" (k in VALIDATION_KS up to `k`) of full-catalog retrieval from pooled states."""
    items = head.item_vectors()
    device = items.device
    ranked = []
    for start in range(0, len(states), batch_size):
        ranked += head.recommend(states[start:start + batch_size].to(device), k, items=items)[1].tolist()
    ks = tuple(x for x in VALIDATION_KS if x <= k)
    metrics = ranking_metrics(ranked, targets.tolist(), catalog, ks)
    return {f"{name.lower()}@{x}": metrics[f"{name}@{x}"] for x in ks for name in ("HR", "NDCG")}


def train_stage1(model, tokenizer, dataset: Dataset, config: Stage1Config, run_dir, *, resume: bool = False,
                 progress: bool = True, encoder_spec: str | None = None) -> dict:
    """Train a RecHead for `model` on `dataset` into `run_dir` (see the module doc). Returns
    {"epochs", "stopped_early", "best": {"epoch", metrics...}, "format_rate", "training_examples",
    "head": path}, also written to RUN/result.json."""
    run = TrainingRun(run_dir, config, progress=progress, resumable=RESUMABLE + ("epochs",))
    run.claim_folder(resume)  # before the trainer writes its caches into it
    trainer = Stage1Trainer(model, tokenizer, dataset, config, run, encoder_spec)
    trained = run.train(trainer, resume)
    result = {"epochs": trained["steps"], "stopped_early": trained["stopped_early"], "best": trained["best"],
              "format_rate": trainer.train.well_formed, "training_examples": len(trainer.train.examples),
              "head": str(run.dir / "head")}
    write_json(run.dir / "result.json", result)
    return result


class Stage1Trainer:
    """Stage 1 for `TrainingRun` (see `training_run.Trainer`): one step is one epoch over
    the training users; building it generates and caches the reasonings, item encodings and
    (frozen LLM) user states."""

    name, unit, panels = "RecHead", "epoch", PANELS
    shown = {"loss": ".4f"}

    def __init__(self, model, tokenizer, dataset: Dataset, cfg: Stage1Config, run: TrainingRun,
                 encoder_spec: str | None):
        self.cfg, self.run, self.tokenizer, self.catalog = cfg, run, tokenizer, dataset.catalog
        folder, progress, device, autocast = run.dir, run.progress, run.device, run.autocast
        model.to(device).eval()
        base_fingerprint = model_fingerprint(model)
        data = examples_for(dataset, cfg)
        train_examples, valid_examples = data.train, data.valid
        with autocast():
            self.train = build_user_texts(model, tokenizer, dataset, train_examples, cfg, folder / "reasonings" / "train",
                                          do_sample=True, progress=progress, desc="reasoning (train)")
            self.valid = build_user_texts(model, tokenizer, dataset, valid_examples, cfg,
                                          folder / "reasonings" / "valid", do_sample=False, progress=progress,
                                          desc="reasoning (valid)") if valid_examples else None
            item_encodings = _cached(folder / "item_encodings.safetensors",
                                     {"catalog": self.catalog.fingerprint(), "encoder": base_fingerprint},
                                     lambda: encode_items(model, tokenizer, self.catalog, progress=progress))
        self.pad = pad_id(tokenizer)
        head_config = RecHeadConfig(hidden_size=item_encodings.shape[1], num_items=len(self.catalog), dim=cfg.dim,
                                    pooling=cfg.pooling, temperature=cfg.temperature,
                                    learn_temperature=cfg.learn_temperature, item_residual=cfg.item_residual)
        self.head = RecHead(head_config, item_encodings).to(device)
        self.groups = torch.as_tensor(identifier_groups(self.catalog), device=device)
        parameters = [{"params": list(self.head.parameters()), "lr": cfg.lr}]
        self.frozen = not cfg.lora_r
        self.states = {}
        if self.frozen:  # encode_all runs without gradient: the caller's model is left as it was
            with autocast():
                for name, texts in (("train", self.train), ("valid", self.valid)):
                    if texts is not None:
                        self.states[name] = _cached(
                            folder / f"user_states-{name}.safetensors",
                            {"encoder": base_fingerprint, "users": _digest(texts.sequences), "pooling": cfg.pooling},
                            lambda t=texts, n=name: encode_all(model, t.sequences, t.starts, pooling=cfg.pooling,
                                                               pad_token_id=self.pad,
                                                               desc=f"user states ({n})" if progress else None))
        else:
            model = with_lora(model, cfg)
            model.train()
            parameters.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lora_lr})
        self.model = model
        self.optimizer = torch.optim.AdamW(parameters, weight_decay=cfg.weight_decay)
        self.trained = _Trained(self.head, model if not self.frozen else None)
        self.provenance = {"catalog": self.catalog.fingerprint(), "encoder": base_fingerprint,
                           "encoder_spec": encoder_spec}
        self.batches_per_epoch = max(1, len(self.train.examples) // cfg.batch_size)
        self.total_steps = cfg.epochs
        self.epoch = 0

    def checkpointed(self) -> dict:
        return {"model": self.trained, "optimizer": self.optimizer}

    def data_state(self) -> dict:
        return {"epoch": self.epoch}

    def restore(self, step: int, data_state: dict) -> None:
        self.epoch = data_state["epoch"]

    def step(self) -> dict:
        """One epoch: its order and negatives are seeded by (seed, epoch), so a resumed run
        draws what an uninterrupted one does."""
        cfg, device, train = self.cfg, self.run.device, self.train
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(train.examples), generator=generator)
        total = 0.0
        self.head.train()
        for b in range(self.batches_per_epoch):
            batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if self.frozen:
                hidden = self.states["train"][batch].to(device)
            else:
                with self.run.autocast():
                    hidden = encode_batch(self.model, [train.sequences[i] for i in batch],
                                          [train.starts[i] for i in batch], cfg.pooling, self.pad)
            negatives = torch.randint(len(self.catalog), (cfg.random_negatives,), generator=generator).to(device)
            loss = sampled_softmax_loss(self.head, self.head.user_vectors(hidden), train.targets[batch].to(device),
                                        negatives, self.groups)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
        self.epoch += 1
        if not self.frozen:  # the adapters moved the LLM: its item encodings follow (no gradient)
            with self.run.autocast():
                self.head.item_encodings.copy_(encode_items(self.model, self.tokenizer, self.catalog,
                                                            progress=False).to(device))
        return {"loss": total / self.batches_per_epoch, "epoch_s": time.perf_counter() - started,
                "temperature": float(self.head.temperature), "format_rate": train.well_formed}

    def validate(self) -> dict | None:
        if self.valid is None:
            return None
        self.head.eval()
        states = self.states.get("valid")
        if states is None:  # LoRA: the LLM changed, so did the validation users' states
            with self.run.autocast():
                states = encode_all(self.model, self.valid.sequences, self.valid.starts, pooling=self.cfg.pooling,
                                    pad_token_id=self.pad)
        return head_metrics(self.head, states, self.valid.targets, self.catalog)

    def save_best(self) -> None:
        """RUN/head (and with LoRA RUN/llm, the merged LLM the head reads: its encoder): a
        head is what stage 2 and evaluation read."""
        run = self.run.dir
        provenance = self.provenance
        if not self.frozen:
            save_pretrained(self.model, self.tokenizer, run / "llm")
            from transformers import AutoModelForCausalLM
            merged = AutoModelForCausalLM.from_pretrained(run / "llm")
            provenance = {**provenance, "encoder": model_fingerprint(merged),
                          "encoder_spec": str((run / "llm").resolve())}
        self.head.provenance = provenance
        self.head.save(run / "head")


class _Trained(torch.nn.Module):
    """What a checkpoint holds: the head, and the LLM when LoRA trains it."""

    def __init__(self, head: RecHead, llm):
        super().__init__()
        self.head = head
        if llm is not None:
            self.llm = llm


def _cached(path: Path, provenance: dict, compute) -> torch.Tensor:
    """A tensor saved at `path` with its provenance (safetensors metadata), recomputed when
    the provenance differs (another catalog, model or users)."""
    from safetensors import safe_open

    expected = {k: str(v) for k, v in provenance.items()}
    if path.exists():
        with safe_open(str(path), "pt") as f:
            if f.metadata() == expected:
                return f.get_tensor("values")
    from safetensors.torch import save

    values = compute()
    write_atomically(path, lambda out: out.write(save({"values": values.contiguous()}, metadata=expected)))
    return values


def _digest(sequences: list[list[int]]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for s in sequences:
        digest.update(b"%d:" % len(s) + b",".join(b"%d" % t for t in s))
    return digest.hexdigest()[:16]
