"""One process per device under `torchrun`: rank bookkeeping, sharding, metric averaging, wrapping.

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything runs in one
process and these helpers are no-ops, so the trainers read the same either way. Each rank
rolls out its own shard of the prompts with its own catalog index; only gradients (DDP)
cross processes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list) -> list:
        """This rank's share of a list every rank holds in the same order (strided, so that
        shards differ in length by at most one)."""
        return items[self.rank::self.world_size]

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average each metric over ranks (every rank must pass the same keys)."""
        if not self.enabled or not metrics:
            return dict(metrics)
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self._comm_device)
        torch_dist.all_reduce(values)
        return dict(zip(keys, (values / self.world_size).tolist()))

    def sum(self, value: float) -> float:
        if not self.enabled:
            return float(value)
        total = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device)
        torch_dist.all_reduce(total)
        return float(total.item())

    @property
    def _comm_device(self) -> torch.device:
        return self.device if torch_dist.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(device: str | None = None) -> Distributed:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU), or return the
    single-process description. `device`: "cpu", "cuda", or None for CUDA when available."""
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Distributed(device=torch.device(device or ("cuda" if use_cuda else "cpu")))
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(rank, world, local, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def wrap_model(model: torch.nn.Module, dist: Distributed) -> torch.nn.Module:
    """DDP (a full replica per rank, gradients averaged) when there are several processes.

    No FSDP in the trainers yet: validation (and GRPO's rollouts) run beam search, whose
    number of forward calls depends on each rank's own prompts, while sharded weights need
    every rank in every forward. `save_checkpoint` already handles FSDP models."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [dist.local_rank] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module DDP wraps."""
    from torch.nn.parallel import DistributedDataParallel
    return model.module if isinstance(model, DistributedDataParallel) else model


def no_sync(module):
    """DDP: no gradient all-reduce on this micro-batch (the step's last one syncs)."""
    return module.no_sync() if hasattr(module, "no_sync") else contextlib.nullcontext()
