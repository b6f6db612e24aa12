"""RPORec end to end with a tiny model: stage 1 (reasoning, RecHead), stage 2 (GRPO on the
reasoning), `rere evaluate --method rporec`, resume, LoRA, the CLI, and the shared Amazon data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rere.cli import main
from rere.data.rere_csv import load_rere_csv
from rere.rporec.config import Stage1Config, Stage2Config
from rere.rporec.evaluation import evaluate_rporec
from rere.rporec.rec_head import RecHead
from rere.rporec.stage1 import train_stage1
from rere.rporec.stage2 import Stage2Trainer
from rere.trainer.metrics_log import read_metrics
from rere.trainer.packed_logprobs import CompletionScorer, pack_groups
from rporec_fixtures import formatted_model, rporec_world
from tiny_models import tiny_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-industrial-rere"
STAGE1 = dict(max_new_tokens=24, generation_batch=8, dim=16, epochs=3, batch_size=16, random_negatives=8,
              eval_examples=6, lr=1e-2, device="cpu")
STAGE2 = dict(num_generations=4, prompts_per_step=4, rollout_batch=4, micro_batch=2, max_steps=2, eval_every=2,
              save_every=1, eval_examples=4, max_new_tokens=24, lr=1e-3, device="cpu")


@pytest.fixture(scope="module")
def world():
    dataset, tokenizer = rporec_world()
    return dataset, tokenizer, formatted_model(dataset, tokenizer)


@pytest.fixture(scope="module")
def stage1_run(world, tmp_path_factory):
    dataset, tokenizer, model = world
    run = tmp_path_factory.mktemp("stage1") / "run"
    result = train_stage1(model, tokenizer, dataset, Stage1Config(**STAGE1), run, progress=False,
                          encoder_spec="tiny")
    return run, result


def test_stage1_writes_its_run_folder_and_a_head_that_loads(world, stage1_run):
    dataset, tokenizer, model = world
    run, result = stage1_run
    assert result["epochs"] == 3 and result["format_rate"] > 0.5
    lines = [json.loads(line) for line in (run / "reasonings" / "train" / "reasonings.jsonl").read_text().splitlines()]
    assert len(lines) == result["training_examples"] and all(len(line["texts"]) == 1 for line in lines)
    for name in ("item_encodings.safetensors", "user_states-train.safetensors", "user_states-valid.safetensors",
                 "metrics.png", "config.yaml", "result.json"):
        assert (run / name).exists(), name
    rows = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert [r["step"] for r in rows if r["split"] == "valid"] == [1, 2, 3]
    head = RecHead.load(run / "head")
    assert head.config.num_items == len(dataset.catalog) and head.provenance["encoder_spec"] == "tiny"


def test_stage1_resumes_to_the_weights_of_an_uninterrupted_run(world, stage1_run, tmp_path):
    dataset, tokenizer, model = world
    config = Stage1Config(**{**STAGE1, "eval_examples": 0})
    whole = train_stage1(model, tokenizer, dataset, config, tmp_path / "whole", progress=False)
    train_stage1(model, tokenizer, dataset, Stage1Config(**{**STAGE1, "eval_examples": 0, "epochs": 1}),
                 tmp_path / "cut", progress=False)
    resumed = train_stage1(model, tokenizer, dataset, config, tmp_path / "cut", resume=True, progress=False)
    assert whole["epochs"] == resumed["epochs"] == 3
    a, b = RecHead.load(tmp_path / "whole" / "head"), RecHead.load(tmp_path / "cut" / "head")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    with pytest.raises(FileExistsError, match="resume it"):
        train_stage1(model, tokenizer, dataset, config, tmp_path / "whole", progress=False)


def test_the_no_reasoning_ablation_and_lora(world, tmp_path):
    dataset, tokenizer, model = world
    plain = train_stage1(model, tokenizer, dataset, Stage1Config(**{**STAGE1, "reasoning": False, "epochs": 1}),
                         tmp_path / "plain", progress=False)
    assert not (tmp_path / "plain" / "reasonings").exists() and plain["best"]["epoch"] == 1
    import copy
    lora = train_stage1(copy.deepcopy(model), tokenizer, dataset,
                        Stage1Config(**{**STAGE1, "lora_r": 4, "epochs": 1, "pooling": "mean"}),
                        tmp_path / "lora", progress=False)
    head = RecHead.load(tmp_path / "lora" / "head")
    assert lora["epochs"] == 1 and head.provenance["encoder_spec"] == str((tmp_path / "lora" / "llm").resolve())
    assert (tmp_path / "lora" / "llm" / "config.json").exists()


def test_evaluate_rporec_writes_the_rere_metrics_and_checks_the_encoder(world, stage1_run, tmp_path):
    dataset, tokenizer, model = world
    run, _ = stage1_run
    head = RecHead.load(run / "head")
    metrics = evaluate_rporec(model, model, tokenizer, head, dataset, tmp_path / "eval", k=10, max_new_tokens=24,
                              batch_size=3, limit=7, progress=False)
    assert metrics["examples"] == 7 and {"HR@10", "NDCG@10", "coverage@10", "invalid_rate"} <= set(metrics)
    lines = [json.loads(line) for line in (tmp_path / "eval" / "rankings.jsonl").read_text().splitlines()]
    assert [len(line["ranked"]) for line in lines] == [10] * 7
    assert len((tmp_path / "eval" / "reasonings" / "reasonings.jsonl").read_text().splitlines()) == 7
    # the rankings are what the head retrieves from the saved reasonings
    again = evaluate_rporec(model, model, tokenizer, head, dataset, tmp_path / "eval", k=10, max_new_tokens=24,
                            batch_size=3, limit=7, progress=False)
    assert again["NDCG@10"] == metrics["NDCG@10"]
    with pytest.raises(ValueError, match="states of another LLM"):
        evaluate_rporec(model, tiny_model("llama", len(tokenizer), seed=9), tokenizer, head, dataset,
                        tmp_path / "other", k=10, limit=2, progress=False)


def test_stage2_rolls_out_rewards_learns_and_resumes(world, stage1_run, tmp_path):
    dataset, tokenizer, model = world
    run, _ = stage1_run
    import copy

    def trainer(name, **overrides):
        return Stage2Trainer(copy.deepcopy(model), tokenizer, dataset, RecHead.load(run / "head"),
                             Stage2Config(**{**STAGE2, **overrides}), tmp_path / name, progress=False)

    assert len(trainer("sample", train_examples=5).examples) == 5  # a seeded sample of the training rows
    t = trainer("probe", beta=0.0, lr=1e-2, warmup_ratio=0.0)
    torch.manual_seed(0)
    rollout = t.rollout(t.step_examples(0))
    assert rollout.completions.shape[:2] == (4, 4) and rollout.metrics["format_rate"] > 0.5
    assert 0 < rollout.metrics["rollout_ndcg"] <= 1
    from rere.trainer.rewards import group_advantages
    advantages = group_advantages(rollout.rewards, rollout.valid)
    assert advantages.abs().sum() > 0  # the head tells the reasonings apart

    def logprobs():
        packed = pack_groups(rollout.prompts, rollout.completions, rollout.lengths)
        with torch.no_grad():
            values = CompletionScorer(t.model, t.config.temperature)(packed)
        return torch.zeros(16).index_add_(0, packed.sequence, values).view(4, 4)

    before = logprobs()
    t._update(rollout.prompts, rollout.completions, rollout.lengths, advantages)
    # GRPO moves probability towards the reasonings with above-average reward
    assert float((advantages * (logprobs() - before)).sum()) > 0

    whole = trainer("whole")
    result = whole.run()
    rows = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all("rollout_ndcg" in r and "format_rate" in r for r in train)
    assert [r["step"] for r in rows if r["split"] == "valid"] == [2]
    assert result["steps"] == 2 and (tmp_path / "whole" / "best" / "config.json").exists()
    assert (tmp_path / "whole" / "metrics.png").exists()

    cut = trainer("cut", max_steps=1)
    cut.run()
    resumed = trainer("cut")
    resumed.run(resume=True)
    for (name, x), (_, y) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(x, y), name

    with pytest.raises(ValueError, match="states of another LLM"):
        Stage2Trainer(tiny_model("llama", len(tokenizer), seed=9), tokenizer, dataset, RecHead.load(run / "head"),
                      Stage2Config(**STAGE2), tmp_path / "other", progress=False)


def test_the_cli_runs_both_stages_and_evaluates(world, tmp_path, capsys):
    dataset, tokenizer, model = world
    data, model_dir = tmp_path / "data", tmp_path / "model"
    dataset.save(data)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    assert main(["rporec", "stage1", "--data", str(data), "--model", str(model_dir), "-o", str(tmp_path / "one"),
                 "--epochs", "1", "--max-new-tokens", "16", "--dim", "8", "--batch-size", "16",
                 "--eval-examples", "4", "--device", "cpu"]) == 0
    assert "trained the RecHead for 1 epochs" in capsys.readouterr().out
    assert main(["rporec", "stage2", "--data", str(data), "--head", str(tmp_path / "one" / "head"),
                 "-o", str(tmp_path / "two"), "--num-generations", "2", "--prompts-per-step", "2",
                 "--max-steps", "1", "--max-new-tokens", "16", "--eval-examples", "2", "--device", "cpu"]) == 0
    assert (tmp_path / "two" / "best" / "config.json").exists()
    args = ["evaluate", "--method", "rporec", "--data", str(data), "--model", str(tmp_path / "two" / "best"),
            "--head", str(tmp_path / "one" / "head"), "-o", str(tmp_path / "eval"), "--beams", "10",
            "--limit", "3", "--max-new-tokens", "16", "--device", "cpu"]
    assert main(args) == 0
    assert "| best |" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 3 and metrics["settings"]["method"] == "rporec"
    no_head = args[:7] + ["-o", str(tmp_path / "bad"), "--limit", "3", "--device", "cpu"]
    assert main(no_head) == 1
    assert "needs --head" in capsys.readouterr().err


def test_both_stages_and_evaluation_on_the_shared_amazon_split(qwen2, tmp_path):
    if not SHARED.exists():
        pytest.skip(f"real data not found at {SHARED}: put ../shared/data beside the checkout")
    dataset = load_rere_csv(SHARED)
    model = tiny_model("llama", len(qwen2), seed=1)
    config = Stage1Config(**{**STAGE1, "max_new_tokens": 8, "train_examples": 64, "eval_examples": 16,
                             "epochs": 2, "batch_size": 32, "random_negatives": 64})
    result = train_stage1(model, qwen2, dataset, config, tmp_path / "one", progress=False)
    head = RecHead.load(tmp_path / "one" / "head")
    assert head.config.num_items == 3686 and result["training_examples"] == 64
    metrics = evaluate_rporec(model, model, qwen2, head, dataset, tmp_path / "eval", k=50, max_new_tokens=8,
                              limit=16, progress=False)
    assert metrics["examples"] == 16 and 0.0 <= metrics["NDCG@10"] <= 1.0
    # one stage-2 step on the real catalog: rewards from the head's ranks among 3,686 items
    trainer = Stage2Trainer(model, qwen2, dataset, head, Stage2Config(**{**STAGE2, "max_steps": 1, "eval_examples": 0,
                                                                          "max_new_tokens": 8, "num_generations": 2,
                                                                          "prompts_per_step": 2, "format_check": False}),
                            tmp_path / "two", progress=False)
    assert trainer.run()["steps"] == 1
    row = read_metrics(tmp_path / "two" / "metrics.jsonl")[0]
    assert 0.0 < row["rollout_ndcg"] <= 1.0 and row["reward"] == pytest.approx(row["rollout_ndcg"])
