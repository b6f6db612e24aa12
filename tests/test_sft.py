"""`rere sft`: the data pipeline, the loss, training, resume, early stopping, validation, the
CLI and two-process DDP.

Models here are tiny Llamas over a byte-level BPE tokenizer learnt from the test texts (488
tokens; prompts of ~100): with Qwen2's 151k vocabulary a tiny model's training step is ~15x
slower, its embedding and head dominating everything.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import rere.evaluation as evaluation
from rere.catalog import Catalog
from rere.cli import main
from rere.data import Dataset, Example
from rere.index import CatalogIndex
from rere.prompts import Prompter
from rere.trainer import sft
from rere.data.examples import train_sample, training_examples
from rere.trainer.metrics_log import MetricsLog, read_metrics
from rere.trainer.sft import CompletionLoss, SFTConfig, train_sft
from rere.trainer.sft_data import batch_order, collate, optimizer_steps, steps_per_epoch, tokenize_examples
from rere.trainer.validation import validate
from tiny_models import tiny_model

WORDS = ["Red", "Blue", "Steel", "Pen", "Pad", "Ink", "Glue", "Tape", "Clip", "Box", "Large", "Small"]
N_ITEMS = 24


def office_dataset() -> Dataset:
    """Histories of consecutive items whose next item is the following one: learnable."""
    titles = [f"{WORDS[i % 12]} {WORDS[(i * 5 + 3) % 12]} No. {i}" for i in range(N_ITEMS)]
    catalog = Catalog.from_lists([f"i{i}" for i in range(N_ITEMS)], titles)

    def examples(first: int, count: int) -> list[Example]:
        return [Example(f"u{k}", tuple(f"i{(k + j) % N_ITEMS}" for j in range(1 + k % 4)),
                        f"i{(k + 1 + k % 4) % N_ITEMS}") for k in range(first, first + count)]

    return Dataset(catalog, {"train": examples(0, 40), "valid": examples(40, 6), "test": examples(46, 6)},
                   source="hand", category="office product")


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return office_dataset()


@pytest.fixture(scope="module")
def tokenizer(dataset) -> PreTrainedTokenizerFast:
    """Byte-level BPE learnt from this dataset's prompts and completions."""
    prompter = Prompter(dataset.catalog, dataset.category)
    texts = [prompter.prompt(e.history) + prompter.completion(e.target) for e in dataset.splits["train"]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<eos>"], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")


def model_for(tokenizer, seed=0):
    return tiny_model("llama", len(tokenizer), seed=seed)


def config(**changes) -> SFTConfig:
    """Settings for the tiny runs: a large learning rate, frequent validation."""
    base = dict(epochs=2, batch_size=4, lr=3e-3, warmup_ratio=0.0, eval_every=5, eval_examples=6, eval_beams=5,
                patience=0, save_every=4, device="cpu")
    return SFTConfig(**{**base, **changes})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- data ----------------------------------------------------------------------------------


def test_sequences_are_the_prompt_then_the_indexed_completion(dataset, qwen2):
    prompter = Prompter(dataset.catalog, dataset.category, tokenizer=qwen2, max_prompt_tokens=120)
    completions = dataset.catalog.tokenize(qwen2)
    examples = dataset.splits["train"][:6]
    data = tokenize_examples(examples, prompter, qwen2, completions)
    for example, sequence, prompt_length in zip(examples, data.sequences, data.prompt_lengths):
        prompt = prompter.prompt(example.history)
        prompt_ids = qwen2(prompt, add_special_tokens=False)["input_ids"]
        assert len(prompt_ids) <= 120 and prompt_length == len(prompt_ids)
        assert sequence[:prompt_length].tolist() == prompt_ids
        target = dataset.catalog.index_of(example.target)
        assert sequence[prompt_length:].tolist() == completions.sequence(target).tolist()
        # Separate tokenisations concatenated = the whole text tokenised (no merge across the seam).
        whole = qwen2(prompt + prompter.completion(example.target), add_special_tokens=False)["input_ids"]
        assert sequence.tolist() == whole + [qwen2.eos_token_id]

    batch = collate(data, [0, 3], pad_token_id=qwen2.pad_token_id)
    for row, i in enumerate([0, 3]):
        n, p = len(data.sequences[i]), data.prompt_lengths[i]
        assert batch["input_ids"][row, :n].tolist() == data.sequences[i].tolist()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        labels = batch["labels"][row]
        assert (labels[:p] == -100).all() and (labels[n:] == -100).all()
        assert labels[p:n].tolist() == data.sequences[i][p:].tolist()
    assert data.completion_lengths.tolist() == [len(s) - p for s, p in zip(data.sequences, data.prompt_lengths)]


def test_batch_order_is_fixed_by_seed_and_epoch_and_buckets_lengths():
    lengths = np.random.default_rng(1).integers(10, 500, size=1003)
    batches = batch_order(lengths, 8, seed=3, epoch=2, chunk_batches=10)
    assert len(batches) == -(-1003 // 8)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1003))
    again = batch_order(lengths, 8, seed=3, epoch=2, chunk_batches=10)
    assert all((a == b).all() for a, b in zip(batches, again))
    other = batch_order(lengths, 8, seed=3, epoch=3, chunk_batches=10)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, other))
    # Sorted within chunks of 80: a batch spans a fraction of the length range (random: ~all of it).
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.2 * np.ptp(lengths)


def test_optimizer_steps_resume_at_any_position_and_share_batches_between_ranks():
    batches = [np.array([i]) for i in range(11)]
    steps = list(optimizer_steps(batches, 0, world_size=2, grad_accum=2))
    # 11 batches, 2 ranks: 5 micro-steps (the 11th batch is skipped), 2 per optimizer step.
    assert [len(micro) for _, micro in steps] == [2, 2, 1] == [2, 2, 1][:steps_per_epoch(11, 2, 2)]
    assert [[b[0] for b in micro[0]] for _, micro in steps] == [[0, 1], [4, 5], [8, 9]]
    assert [position for position, _ in steps] == [4, 8, 10]
    # Resuming from a step's position gives the same later steps.
    resumed = list(optimizer_steps(batches, 4, world_size=2, grad_accum=2))
    assert [(p, [[b.tolist() for b in m] for m in micro]) for p, micro in resumed] == \
           [(p, [[b.tolist() for b in m] for m in micro]) for p, micro in steps[1:]]


# -- loss ----------------------------------------------------------------------------------


def test_completion_loss_is_hugging_faces_label_loss(dataset, tokenizer):
    model = model_for(tokenizer)
    prompter = Prompter(dataset.catalog, dataset.category)
    data = tokenize_examples(dataset.splits["train"][:5], prompter, tokenizer, dataset.catalog.tokenize(tokenizer))
    batch = collate(data, range(5), tokenizer.pad_token_id)
    ours = CompletionLoss(model)(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                 1 / int(data.completion_lengths.sum()))
    reference = model(**batch).loss  # mean over the labelled tokens, [tokens, V] logits
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


# -- training ------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_saves_a_loadable_best_model(tmp_path, dataset, tokenizer):
    model = model_for(tokenizer)
    result = train_sft(model, tokenizer, dataset, config(epochs=3, batch_size=8, eval_every=8), tmp_path,
                       progress=False)
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert result["steps"] == len(train) == 3 * 5 and result["epochs_done"] == 3
    assert np.mean([r["loss"] for r in train[-3:]]) < 0.5 * np.mean([r["loss"] for r in train[:3]])
    assert result["best"]["step"] in (8, 15)
    best = AutoModelForCausalLM.from_pretrained(tmp_path / "best")
    assert (tmp_path / "metrics.png").stat().st_size > 0 and (tmp_path / "config.yaml").exists()
    assert (tmp_path / "best" / "tokenizer.json").exists() and best.config.vocab_size == len(tokenizer)


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(tmp_path, dataset, tokenizer, monkeypatch):
    settings = dict(grad_accum=2, save_every=3, eval_examples=0)  # no validation: only training matters here
    whole = model_for(tokenizer)
    train_sft(whole, tokenizer, dataset, config(**settings), tmp_path / "whole", progress=False)
    real_log = MetricsLog.log

    def killed_at_step_7(self, step, metrics, split="train"):
        real_log(self, step, metrics, split)
        if step == 7:  # after the checkpoint of step 6; step 7 is logged, then lost
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(MetricsLog, "log", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train_sft(model_for(tokenizer), tokenizer, dataset, config(**settings), tmp_path / "cut", progress=False)
    monkeypatch.setattr(MetricsLog, "log", real_log)
    assert [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")] == list(range(1, 8))
    resumed = model_for(tokenizer, seed=9)  # other initial weights: the checkpoint must replace them
    second = train_sft(resumed, tokenizer, dataset, config(**settings), tmp_path / "cut", resume=True,
                       progress=False)
    assert second["steps"] == 10  # 40 examples / 4 per batch / 2 accumulated, 2 epochs
    for name, value in weights(whole).items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, 11))  # nothing logged twice
    with pytest.raises(ValueError, match="lr differ"):
        train_sft(model_for(tokenizer), tokenizer, dataset, config(**settings, lr=1e-3), tmp_path / "cut",
                  resume=True, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train_sft(model_for(tokenizer), tokenizer, dataset, config(), tmp_path / "cut", progress=False)


def test_max_steps_is_the_length_of_the_learning_rate_schedule(tmp_path, dataset, tokenizer):
    settings = dict(grad_accum=2, eval_examples=0)  # 10 steps in 2 epochs
    train_sft(model_for(tokenizer), tokenizer, dataset, config(**settings, max_steps=4), tmp_path / "capped",
              progress=False)
    train_sft(model_for(tokenizer), tokenizer, dataset, config(**settings), tmp_path / "whole", progress=False)

    def cosine(steps: int) -> list[float]:  # from 3e-3, no warmup; each step logs the lr it used
        return [3e-3 * 0.5 * (1 + np.cos(np.pi * k / steps)) for k in range(steps)]

    capped, whole = ([r["lr"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["split"] == "train"]
                     for name in ("capped", "whole"))
    assert capped == pytest.approx(cosine(4)) and capped[-1] < 0.15 * capped[0]  # decayed over the 4 steps
    assert whole == pytest.approx(cosine(10)) and whole[3] > 2 * capped[3]
    # Another max_steps is another schedule: resuming with it would not continue the same run.
    with pytest.raises(ValueError, match="max_steps differ"):
        train_sft(model_for(tokenizer), tokenizer, dataset, config(**settings, max_steps=8), tmp_path / "capped",
                  resume=True, progress=False)


def test_train_examples_trains_on_a_seeded_sample_of_the_training_rows(tmp_path, dataset, tokenizer, monkeypatch):
    rows = training_examples(dataset).train
    sample = train_sample(rows, 16, seed=0)
    assert len(sample) == 16 and set(sample) <= set(rows)
    assert sample == train_sample(rows, 16, seed=0) and sample != train_sample(rows, 16, seed=1)
    assert train_sample(rows, 100, seed=0) == rows == train_sample(rows, None, seed=0)
    tokenized = []
    real_tokenize = sft.tokenize_examples

    def tokenize(examples, *args):  # the examples training uses
        tokenized.append(examples)
        return real_tokenize(examples, *args)

    monkeypatch.setattr(sft, "tokenize_examples", tokenize)
    result = train_sft(model_for(tokenizer), tokenizer, dataset, config(epochs=1, train_examples=16, eval_examples=0),
                       tmp_path / "run", progress=False)
    assert tokenized == [sample]
    assert result["steps"] == 4  # 16 examples / 4 per batch, where all 40 make 10
    with pytest.raises(ValueError, match="train_examples differ"):
        train_sft(model_for(tokenizer), tokenizer, dataset, config(epochs=1, train_examples=20, eval_examples=0),
                  tmp_path / "run", resume=True, progress=False)
    for wrong in (0, -3):
        with pytest.raises(ValueError, match="train_examples must be >= 1"):
            train_sft(model_for(tokenizer), tokenizer, dataset, config(train_examples=wrong), tmp_path / f"{wrong}",
                      progress=False)


def test_early_stopping_after_patience_evaluations_without_progress(tmp_path, dataset, tokenizer):
    model = model_for(tokenizer)
    before = weights(model)
    # lr 0: the metrics never improve after the first evaluation.
    result = train_sft(model, tokenizer, dataset, config(lr=0.0, eval_every=2, patience=2), tmp_path, progress=False)
    assert result["stopped_early"] and result["steps"] == 6 and result["best"]["step"] == 2
    valid = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4, 6]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    # A stopped run stays stopped when resumed.
    assert train_sft(model, tokenizer, dataset, config(lr=0.0, eval_every=2, patience=2), tmp_path, resume=True,
                     progress=False)["steps"] == 6


def test_lora_trains_only_adapters_and_best_is_merged(tmp_path, dataset, tokenizer):
    model = model_for(tokenizer)
    base = weights(model)
    train_sft(model, tokenizer, dataset, config(lora_r=4, max_steps=3, eval_every=3), tmp_path, progress=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "best").state_dict()
    assert set(merged) == set(base)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


# -- validation ----------------------------------------------------------------------------


def test_validate_gives_rere_evaluates_metrics(tmp_path, dataset, tokenizer):
    model = model_for(tokenizer, seed=4).train()
    prompter = Prompter(dataset.catalog, dataset.category)
    index = CatalogIndex.from_catalog(dataset.catalog, tokenizer, vocab_size=len(tokenizer))
    examples = dataset.splits["test"]
    ours = validate(model, tokenizer, index, dataset.catalog, prompter, examples, num_beams=10, batch_size=4)
    assert model.training  # the mode it came in
    reference = evaluation.evaluate(model, tokenizer, dataset, tmp_path, num_beams=10, batch_size=3, progress=False)
    assert ours["examples"] == len(examples)
    for k in (5, 10):
        assert ours[f"hr@{k}"] == pytest.approx(reference[f"HR@{k}"])
        assert ours[f"ndcg@{k}"] == pytest.approx(reference[f"NDCG@{k}"])
    assert ours["invalid_rate"] == pytest.approx(reference["invalid_rate"])
    assert validate(model, tokenizer, index, dataset.catalog, prompter, [])["examples"] == 0


# -- command line --------------------------------------------------------------------------


def test_cli_trains_then_rere_evaluate_reads_the_best_model(tmp_path, dataset, tokenizer):
    model_for(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    dataset.save(tmp_path / "data")
    (tmp_path / "sft.yaml").write_text("batch_size: 4\nlr: 3e-3\neval_beams: 5\neval_examples: 6\n")
    args = ["sft", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "model"), "-o", str(tmp_path / "run"),
            "--config", str(tmp_path / "sft.yaml"), "--epochs", "1", "--max-steps", "3", "--device", "cpu"]
    assert main(args) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "batch_size: 4" in saved and "max_steps: 3" in saved
    assert main(args) == 1  # the folder holds a run: not without --resume
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "run" / "best"),
                 "-o", str(tmp_path / "eval"), "--beams", "5", "--limit", "3"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["examples"] == 3


DDP_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from rere.data import Dataset
from rere.distributed import init_distributed
from rere.trainer.sft import SFTConfig, train_sft

folder, mode = sys.argv[1:3]
dist = init_distributed("cpu")
model = AutoModelForCausalLM.from_pretrained(folder + "/model")
tokenizer = AutoTokenizer.from_pretrained(folder + "/model")
config = SFTConfig(epochs=1, batch_size=4, grad_accum=2, lr=3e-3, eval_every=2, eval_examples=5, eval_beams=4,
                   save_every=100, device="cpu", fsdp=mode == "fsdp")
train_sft(model, tokenizer, Dataset.load(folder + "/data"), config, folder + "/run-" + mode, dist=dist, progress=False)
if mode == "fsdp":
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
else:
    state = model.state_dict()
torch.save({k: v.detach().clone() for k, v in state.items()}, f"{folder}/{mode}-rank{dist.rank}.pt")
"""


def two_processes(tmp_path, mode: str) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               str(tmp_path / "script.py"), str(tmp_path), mode]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    crashed = [line for line in done.stderr.splitlines() if "[rank1]" in line or "[rank0]" in line]
    assert done.returncode == 0, "\n".join(crashed[-40:]) + "\n...\n" + done.stderr[-2000:]
    return [torch.load(tmp_path / f"{mode}-rank{r}.pt") for r in (0, 1)]


@pytest.mark.slow  # ~40 s: two runs of two processes, each importing torch and transformers
def test_two_process_ddp_keeps_the_ranks_identical_and_fsdp_matches_it(tmp_path, dataset, tokenizer):
    model_for(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    dataset.save(tmp_path / "data")
    (tmp_path / "script.py").write_text(textwrap.dedent(DDP_SCRIPT))
    rank0, rank1 = two_processes(tmp_path, "ddp")
    initial = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name
    assert any(not torch.equal(rank0[n], initial[n]) for n in initial)
    # 40 examples, 10 batches, 2 ranks x 2 accumulated: 3 steps (the last with one micro-step).
    train = [r for r in read_metrics(tmp_path / "run-ddp" / "metrics.jsonl") if r["split"] == "train"]
    assert len(train) == 3 and (Path(tmp_path / "run-ddp" / "best") / "model.safetensors").exists()
    # FSDP2 (validation's beam searches in lockstep: the ranks validate 3 and 2 examples):
    # the same weights, gathered from the shards, up to float reduction order.
    sharded = two_processes(tmp_path, "fsdp")
    for name, value in rank0.items():
        torch.testing.assert_close(sharded[0][name], value, rtol=1e-4, atol=1e-5, msg=name)
    valid = [r for r in read_metrics(tmp_path / "run-fsdp" / "metrics.jsonl") if r["split"] == "valid"]
    ddp_valid = [r for r in read_metrics(tmp_path / "run-ddp" / "metrics.jsonl") if r["split"] == "valid"]
    assert [r["ndcg@10"] for r in valid] == pytest.approx([r["ndcg@10"] for r in ddp_valid])
    assert (Path(tmp_path / "run-fsdp" / "best") / "model.safetensors").exists()
