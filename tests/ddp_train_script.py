"""Run by tests/test_grpo_trainer.py under torchrun: two CPU ranks (gloo) train ReRe, with a
DDP replica per rank or the model sharded by FSDP2 (argv[4] "ddp" / "fsdp"), and each rank
dumps the full final weights (gathered from the shards under FSDP)."""
import os
import sys

import torch

from rere.models import load_model
from rere.data import Dataset
from rere.distributed import init_distributed, unwrap
from rere.trainer.grpo import GRPOConfig, GRPOTrainer

data, model_dir, run_dir, mode = sys.argv[1:5]
dist = init_distributed("cpu")
model, tokenizer = load_model(model_dir, None, torch.float32)
config = GRPOConfig(num_generations=4, prompts_per_step=4, micro_batch=1, max_steps=2, eval_every=0, save_every=2,
                    eval_examples=4, eval_beams=4, lr=1e-3, device="cpu", fsdp=mode == "fsdp")
trainer = GRPOTrainer(model.train(), tokenizer, Dataset.load(data), config, run_dir, dist=dist, progress=False)
trainer.run()
if mode == "fsdp":
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    weights = get_model_state_dict(unwrap(trainer.model), options=StateDictOptions(full_state_dict=True))
else:
    weights = unwrap(trainer.model).state_dict()
torch.save({k: v.detach().clone() for k, v in weights.items()}, f"{os.environ['RERE_TEST_DUMP']}-{mode}-{dist.rank}.pt")
