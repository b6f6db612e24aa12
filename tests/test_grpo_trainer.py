"""The ReRe trainer end to end with tiny models: learning signal, resume, LoRA, CLI, DDP."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rere.cli import main
from rere.data.examples import train_sample, training_examples
from rere.trainer.grpo import GRPOConfig, GRPOTrainer
from rere.trainer.metrics_log import read_metrics
from rere.trainer.packed_logprobs import CompletionScorer, pack_groups
from test_evaluation import office_dataset
from tiny_models import tiny_model

VOCAB = 151_936
TINY = dict(num_generations=4, prompts_per_step=4, micro_batch=2, max_steps=4, eval_every=2, save_every=2,
            eval_examples=4, eval_beams=4, lr=1e-3, rollout_batch=4)


def trainer(tmp_path, qwen2, name="run", model=None, **overrides):
    config = GRPOConfig(**{**TINY, **overrides})
    model = model if model is not None else tiny_model("llama", VOCAB, seed=3).train()
    return GRPOTrainer(model, qwen2, office_dataset(24, 40), config, tmp_path / name, progress=False)


def test_a_run_writes_metrics_checkpoints_plot_and_best_model(tmp_path, qwen2):
    result = trainer(tmp_path, qwen2).run()
    run = tmp_path / "run"
    rows = read_metrics(run / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(0 <= r["in_group_hit_rate"] <= 1 and r["tokens"] > 0 for r in train)
    assert [r["step"] for r in rows if r["split"] == "valid"] == [2, 4]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000002", "checkpoint-0000004"]
    assert (run / "metrics.png").stat().st_size > 1000 and (run / "config.yaml").exists()
    assert result["steps"] == 4 and (run / "best" / "config.json").exists()


def test_a_step_raises_the_targets_log_prob(tmp_path, qwen2):
    """With G = the whole catalog the target is always in the group and has the highest
    reward (rule 1, ranking 0 vs negative for the others): one update must make it likelier."""
    t = trainer(tmp_path, qwen2, num_generations=24, prompts_per_step=2, micro_batch=2, beta=0.0, lr=3e-4,
                warmup_ratio=0.0)
    examples = t.step_examples(0)

    def target_logprob():
        prompts = [torch.tensor(qwen2(t.prompter.prompt(e.history), add_special_tokens=False)["input_ids"])
                   for e in examples]
        completions = [torch.tensor(qwen2(t.prompter.completion(e.target), add_special_tokens=False)["input_ids"]
                                    + [qwen2.eos_token_id]) for e in examples]
        width = max(c.numel() for c in completions)
        padded = torch.stack([torch.nn.functional.pad(c, (0, width - c.numel())) for c in completions])[:, None]
        lengths = torch.tensor([[c.numel()] for c in completions])
        with torch.no_grad():
            return CompletionScorer(t.model)(pack_groups(prompts, padded, lengths)).sum().item()

    before = target_logprob()
    metrics = t.step()
    assert metrics["in_group_hit_rate"] == 1.0
    assert target_logprob() > before


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, qwen2, monkeypatch):
    """Soft reference syncs on: the drifting reference must come back from the checkpoint too."""
    whole = trainer(tmp_path, qwen2, "whole", ref_sync_every=1)
    whole.run()

    cut = trainer(tmp_path, qwen2, "cut", ref_sync_every=1)
    real_step = GRPOTrainer.step

    def crash_after_two(self):
        if self.step_index == 3:
            raise KeyboardInterrupt("killed")
        return real_step(self)

    monkeypatch.setattr(GRPOTrainer, "step", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    monkeypatch.setattr(GRPOTrainer, "step", real_step)
    # As a new process would: the same --model (the reference is its frozen copy), other RNG state.
    torch.manual_seed(123)
    resumed = trainer(tmp_path, qwen2, "cut", ref_sync_every=1)
    resumed.run(resume=True)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]  # step 3 ran twice, logged once
    # Other settings would not continue the same run (a longer one may: max_steps, epochs).
    with pytest.raises(ValueError, match=r"\(beta, lr differ\)"):
        trainer(tmp_path, qwen2, "cut", ref_sync_every=1, lr=5e-4, beta=0.01).run(resume=True)


def test_lora_uses_the_adapter_free_base_as_reference(tmp_path, qwen2):
    pytest.importorskip("peft")
    t = trainer(tmp_path, qwen2, lora_r=4, max_steps=3, beta=0.1, warmup_ratio=0.0)
    assert t.reference is None
    trainable = [n for n, p in t.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    metrics = t.step()
    # LoRA's B starts at zero: the first rollout's policy is the base model, so KL is 0.
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-7)
    metrics = t.step()
    assert metrics["kl"] > 0


def test_sampling_rollouts_and_the_other_loss_types_run(tmp_path, qwen2):
    for loss_type in ("bnpo", "dr_grpo", "dapo"):
        t = trainer(tmp_path, qwen2, loss_type, rollout="sample", loss_type=loss_type, max_steps=1,
                    num_iterations=2, epsilon_high=0.28)
        metrics = t.step()
        assert torch.isfinite(torch.tensor(metrics["loss"])) and 0 <= metrics["clip_fraction"] <= 1


def test_bad_settings_are_named(tmp_path, qwen2):
    with pytest.raises(ValueError, match="loss_type"):
        trainer(tmp_path, qwen2, loss_type="ppo")
    with pytest.raises(ValueError, match="unknown reward"):
        trainer(tmp_path, qwen2, rewards=("rule", "clicks"))


def test_train_examples_trains_on_a_seeded_sample_of_the_training_rows(tmp_path, qwen2):
    rows = training_examples(office_dataset(24, 40)).train  # 30 sliding windows
    model = tiny_model("llama", VOCAB, seed=3)  # only built here, never trained: one model serves all

    def examples(**overrides) -> list:
        return trainer(tmp_path, qwen2, model=model, **overrides).examples

    t = trainer(tmp_path, qwen2, model=model, train_examples=12)
    assert len(t.examples) == 12 and t.examples == train_sample(rows, 12, seed=0) and set(t.examples) <= set(rows)
    assert examples(train_examples=12) == t.examples and examples(train_examples=12, seed=1) != t.examples
    # An epoch is the sample's: 12 prompts / 4 per step, where all 30 make 7 steps.
    drawn = [e for step in range(3) for e in t.step_examples(step)]
    assert t.steps_per_epoch == 3 and len(drawn) == 12 and set(drawn) == set(t.examples)
    assert examples(train_examples=100) == rows == examples()
    with pytest.raises(ValueError, match="train_examples must be >= 1"):
        trainer(tmp_path, qwen2, model=model, train_examples=0)


def save_tiny_run_inputs(tmp_path, qwen2) -> tuple[Path, Path]:
    data, model_dir = tmp_path / "data", tmp_path / "model"
    office_dataset(24, 40).save(data)
    tiny_model("llama", VOCAB, seed=3).save_pretrained(model_dir)
    qwen2.save_pretrained(model_dir)
    return data, model_dir


def test_the_cli_trains_and_resumes(tmp_path, qwen2, capsys):
    data, model_dir = save_tiny_run_inputs(tmp_path, qwen2)
    args = ["train", "--data", str(data), "--model", str(model_dir), "-o", str(tmp_path / "run"),
            "--num-generations", "4", "--prompts-per-step", "4", "--max-steps", "2", "--save-every", "1",
            "--eval-examples", "2", "--eval-beams", "4", "--device", "cpu"]
    assert main(args) == 0
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-0000002"
    assert main(args[:-4] + ["--max-steps", "3", "--resume", "--device", "cpu"]) == 0
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-0000003"
    assert main(["train", "--data", str(data), "--model", str(model_dir), "-o", str(tmp_path / "none"), "--resume"]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def run_two_ranks(tmp_path, data, model_dir, mode: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RERE_TEST_DUMP": str(tmp_path / "weights")}
    with socket.socket() as probe:  # torchrun's static rendezvous does not take port 0
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               str(Path(__file__).with_name("ddp_train_script.py")), str(data), str(model_dir),
               str(tmp_path / f"run-{mode}"), mode]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    # Each rank's own error lines first: the tail alone shows only the survivor's "peer closed".
    crashed = [line for line in result.stderr.splitlines() if "[rank1]" in line or "[rank0]" in line]
    assert result.returncode == 0, "\n".join(crashed[-40:]) + "\n...\n" + result.stderr[-2000:]
    return [torch.load(tmp_path / f"weights-{mode}-{r}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_two_ranks_under_torchrun_end_with_the_same_weights_with_ddp_or_fsdp(tmp_path, qwen2):
    data, model_dir = save_tiny_run_inputs(tmp_path, qwen2)
    ddp = run_two_ranks(tmp_path, data, model_dir, "ddp")
    for name in ddp[0]:
        assert torch.equal(ddp[0][name], ddp[1][name]), name
    assert (tmp_path / "run-ddp" / "latest").exists()
    # The ranks rolled out different prompts: the step's metrics average two shards of 2.
    rows = [r for r in read_metrics(tmp_path / "run-ddp" / "metrics.jsonl") if r["split"] == "train"]
    assert len(rows) == 2
    # FSDP2: the same training, the weights sharded over the two ranks (beam search in
    # lockstep, reference sharded too); gathered, they are DDP's up to float reduction order.
    fsdp = run_two_ranks(tmp_path, data, model_dir, "fsdp")
    assert sorted(fsdp[0]) == sorted(ddp[0])
    for name in ddp[0]:
        torch.testing.assert_close(fsdp[0][name], ddp[0][name], rtol=1e-4, atol=1e-5, msg=name)
        assert torch.equal(fsdp[0][name], fsdp[1][name]), name
    assert (tmp_path / "run-fsdp" / "best" / "config.json").exists()
