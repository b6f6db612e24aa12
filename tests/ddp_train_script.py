"""Run by tests/test_grpo_trainer.py under torchrun: two CPU ranks (gloo) train ReRe and each
dumps its final weights, which must be identical (DDP keeps the replicas in step)."""
import os
import sys

import torch

from rere.commands.evaluate import load_model
from rere.data import Dataset
from rere.trainer.distributed import init_distributed, unwrap
from rere.trainer.grpo import GRPOConfig, GRPOTrainer

data, model_dir, run_dir = sys.argv[1:4]
dist = init_distributed("cpu")
model, tokenizer = load_model(model_dir, None, torch.float32)
config = GRPOConfig(num_generations=4, prompts_per_step=4, micro_batch=1, max_steps=2, eval_every=0, save_every=2,
                    eval_examples=4, eval_beams=4, lr=1e-3, device="cpu")
trainer = GRPOTrainer(model.train(), tokenizer, Dataset.load(data), config, run_dir, dist=dist, progress=False)
trainer.run()
torch.save(unwrap(trainer.model).state_dict(), f"{os.environ['RERE_TEST_DUMP']}-{dist.rank}.pt")
