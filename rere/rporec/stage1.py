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
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rere.data.dataset import Dataset, sample_examples
from rere.data.examples import train_sample, training_examples
from rere.files import write_atomically
from rere.metrics import identifier_groups, ranking_metrics
from rere.rporec.config import Stage1Config
from rere.rporec.encoding import catalog_fingerprint, encode_all, encode_batch, encode_items, model_fingerprint, pad_id
from rere.rporec.reasoning import ReasoningCache, reasoning_prompter, user_sequence
from rere.rporec.rec_head import RecHead, RecHeadConfig
from rere.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_pretrained
from rere.trainer.config import config_to_dict, save_config
from rere.trainer.lora import with_lora
from rere.trainer.metrics_log import MetricsLog, plot_metrics
from rere.trainer.validation import record_validation

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
    {"epochs", "best": {"epoch", metrics...} or None, "format_rate", "head": path}."""
    cfg = config
    run = Path(run_dir)
    if not resume and (latest_checkpoint(run) is not None or (run / "metrics.jsonl").exists()):
        raise FileExistsError(f"{run} holds a stage-1 run: resume it (--resume) or choose another folder")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    torch.manual_seed(cfg.seed)
    model.to(device).eval()
    catalog = dataset.catalog
    base_fingerprint = model_fingerprint(model)

    data = training_examples(dataset, cfg.evaluated_split, cfg.max_history)
    # the same seeded draws as every trainer's (the first N rows would be one or two users)
    train_examples = train_sample(data.train, cfg.train_examples, cfg.seed)
    valid_examples = sample_examples(data.valid, cfg.eval_examples, cfg.seed)
    with autocast():
        train = build_user_texts(model, tokenizer, dataset, train_examples, cfg, run / "reasonings" / "train",
                                 do_sample=True, progress=progress, desc="reasoning (train)")
        valid = build_user_texts(model, tokenizer, dataset, valid_examples, cfg, run / "reasonings" / "valid",
                                 do_sample=False, progress=progress, desc="reasoning (valid)") if valid_examples else None
        item_encodings = _cached(run / "item_encodings.safetensors", {"catalog": catalog_fingerprint(catalog),
                                                                      "encoder": base_fingerprint},
                                 lambda: encode_items(model, tokenizer, catalog, progress=progress))
    pad = pad_id(tokenizer)

    head_config = RecHeadConfig(hidden_size=item_encodings.shape[1], num_items=len(catalog), dim=cfg.dim,
                                pooling=cfg.pooling, temperature=cfg.temperature,
                                learn_temperature=cfg.learn_temperature, item_residual=cfg.item_residual)
    head = RecHead(head_config, item_encodings).to(device)
    groups = torch.as_tensor(identifier_groups(catalog), device=device)
    parameters = [{"params": list(head.parameters()), "lr": cfg.lr}]
    frozen = not cfg.lora_r
    if frozen:  # encode_all runs without gradient: the caller's model is left as it was
        states = {}
        with autocast():
            for name, texts in (("train", train), ("valid", valid)):
                if texts is not None:
                    states[name] = _cached(run / f"user_states-{name}.safetensors",
                                           {"encoder": base_fingerprint, "users": _digest(texts.sequences),
                                            "pooling": cfg.pooling},
                                           lambda t=texts, n=name: encode_all(model, t.sequences, t.starts,
                                                                              pooling=cfg.pooling, pad_token_id=pad,
                                                                              desc=f"user states ({n})" if progress else None))
    else:
        model = with_lora(model, cfg.lora_r, cfg.lora_alpha)
        model.train()
        parameters.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lora_lr})
    optimizer = torch.optim.AdamW(parameters, weight_decay=cfg.weight_decay)
    trained = _Trained(head, model if not frozen else None)

    epoch, state = 0, {"best": None, "bad_evals": 0, "stopped_early": False}
    if resume and latest_checkpoint(run) is not None:
        loaded = load_checkpoint(run, model=trained, optimizer=optimizer)
        epoch = loaded["data_state"]["epoch"]
        state.update(loaded["extra"])
    log = MetricsLog(run, resume_step=epoch if resume else None)
    provenance = {"catalog": catalog_fingerprint(catalog), "encoder": base_fingerprint,
                  "encoder_spec": encoder_spec}
    batches_per_epoch = max(1, len(train.examples) // cfg.batch_size)

    def validate_now() -> None:
        head.eval()
        valid_states = states["valid"] if frozen else None
        if valid_states is None:  # LoRA: the LLM changed, so did the validation users' states
            with autocast():
                valid_states = encode_all(model, valid.sequences, valid.starts, pooling=cfg.pooling, pad_token_id=pad)
        metrics = head_metrics(head, valid_states, valid.targets, catalog)
        log.log(epoch, metrics, split="valid")
        if record_validation(state, metrics, {"epoch": epoch}, cfg.patience):
            _save_best(head, model, tokenizer, run, provenance, frozen)

    bar = tqdm(total=cfg.epochs, initial=epoch, desc="RecHead", unit="epoch", disable=not progress)
    while epoch < cfg.epochs and not state["stopped_early"]:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(train.examples), generator=generator)
        total = 0.0
        head.train()
        for b in range(batches_per_epoch):
            batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if frozen:
                hidden = states["train"][batch].to(device)
            else:
                with autocast():
                    hidden = encode_batch(model, [train.sequences[i] for i in batch], [train.starts[i] for i in batch],
                                          cfg.pooling, pad)
            negatives = torch.randint(len(catalog), (cfg.random_negatives,), generator=generator).to(device)
            loss = sampled_softmax_loss(head, head.user_vectors(hidden), train.targets[batch].to(device), negatives,
                                        groups)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        epoch += 1
        if not frozen:  # the adapters moved the LLM: its item encodings follow (no gradient)
            with autocast():
                head.item_encodings.copy_(encode_items(model, tokenizer, catalog, progress=False).to(device))
        metrics = {"loss": total / batches_per_epoch, "epoch_s": time.perf_counter() - started,
                   "temperature": float(head.temperature), "format_rate": train.well_formed}
        log.log(epoch, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        bar.update(1)
        if valid is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            validate_now()
        elif valid is None:
            _save_best(head, model, tokenizer, run, provenance, frozen)
            state["best"] = {"epoch": epoch}
        save_checkpoint(run, step=epoch, model=trained, optimizer=optimizer, data_state={"epoch": epoch},
                        config=config_to_dict(cfg), extra=state, keep=cfg.keep_checkpoints)
    bar.close()
    log.close()
    plot_metrics(run / "metrics.jsonl", run / "metrics.png", PANELS)
    result = {"epochs": epoch, "stopped_early": state["stopped_early"], "best": state["best"],
              "format_rate": train.well_formed, "training_examples": len(train.examples), "head": str(run / "head")}
    write_atomically(run / "result.json", json.dumps(result, indent=2) + "\n")
    return result


class _Trained(torch.nn.Module):
    """What a checkpoint holds: the head, and the LLM when LoRA trains it."""

    def __init__(self, head: RecHead, llm):
        super().__init__()
        self.head = head
        if llm is not None:
            self.llm = llm


def _save_best(head: RecHead, model, tokenizer, run: Path, provenance: dict, frozen: bool) -> None:
    """RUN/head (and with LoRA RUN/llm, the merged LLM the head reads: its encoder)."""
    if not frozen:
        save_pretrained(model, tokenizer, run / "llm")
        from transformers import AutoModelForCausalLM
        merged = AutoModelForCausalLM.from_pretrained(run / "llm")
        provenance = {**provenance, "encoder": model_fingerprint(merged), "encoder_spec": str((run / "llm").resolve())}
    head.provenance = provenance
    head.save(run / "head")


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
