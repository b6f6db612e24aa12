"""One process per device under `torchrun`: rank bookkeeping, sharding, metric averaging, wrapping.

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything runs in one
process and these helpers are no-ops, so the trainers read the same either way. Each rank
rolls out its own shard of the prompts with its own catalog index.

Two ways to spread the model (`wrap_model`):

- DDP (default): a full replica per rank, gradients averaged.
- FSDP2 (`fsdp=True`, for models that do not fit one device): `fully_shard` on each
  decoder layer and on the trainer's root module (the rest: embeddings, final norm, LM
  head). Every forward then gathers weights from all ranks, so every rank must run the
  same number of forwards, while beam search and generation run as many as their own
  prompts need. `lockstep` solves that: inside it, each rank votes before each forward of
  the LLM, and a rank that is done keeps running one-token forwards (outside the search)
  until every rank has voted "done".
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

    def agree(self, error: BaseException | None, what: str) -> None:
        """Every rank reports whether `what` failed on it; all raise if one did (this rank its
        own error), so that none waits forever at a later collective. A barrier too."""
        failed = self.mean({"failed": float(error is not None)})["failed"]
        if error is not None:
            raise error
        if failed > 0:
            raise RuntimeError(f"{what} failed on another rank (see its error)")

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


def wrap_model(root: torch.nn.Module, dist: Distributed, *, fsdp: bool = False) -> torch.nn.Module:
    """`root` (a trainer's module holding the LLM as `root.model`, with a `warm_up()`
    forward) under DDP, or sharded by FSDP2 in place (see the module doc), when there are
    several processes; `root` itself in one process."""
    if not dist.enabled:
        return root
    if fsdp:
        return shard(root)
    from torch.nn.parallel import DistributedDataParallel
    ids = [dist.local_rank] if dist.device.type == "cuda" else None
    return DistributedDataParallel(root, device_ids=ids)


def shard(root: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 on `root.model`'s decoder layers, then on `root` (its remaining parameters,
    tied embeddings included, form the root's unit). One forward through the root follows:
    FSDP takes the first module whose forward runs for its root, and a search would
    otherwise call the LLM first."""
    from torch.distributed.fsdp import fully_shard

    for layer in root.model.get_decoder().layers:
        fully_shard(layer)
    fully_shard(root)
    with torch.no_grad():
        root.warm_up()
    # The root keeps its weights gathered after a forward (backward would gather them
    # again); without this, an optimizer built now would hold the gathered copies.
    root.reshard()
    return root


def is_sharded(module: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no FSDP2
        return False
    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def lockstep(root: torch.nn.Module, dist: Distributed):
    """Run forwards of `root.model` outside `root`'s own forward (beam search, generate)
    on every rank in step, when `root` is sharded (a no-op otherwise). Inside: the root's
    own weights stay gathered, and each forward of the LLM is preceded by a vote; on the
    way out a rank keeps answering with one-token forwards until all are done. No other
    collective may run inside (average metrics after leaving)."""
    if not (dist.enabled and is_sharded(root)):
        yield
        return
    llm = root.model
    draining = False
    device = next(llm.parameters()).device

    def vote(flag: float) -> float:
        ballot = torch.tensor([flag], dtype=torch.float64, device=dist._comm_device)
        torch_dist.all_reduce(ballot)
        return float(ballot.item())

    def before_forward(module, args, kwargs):
        if not draining:
            vote(1.0)

    root.unshard()
    handle = llm.register_forward_pre_hook(before_forward, with_kwargs=True)
    try:
        yield
    finally:
        draining = True
        try:
            with torch.no_grad():
                while vote(0.0) > 0:
                    llm(input_ids=torch.zeros((1, 1), dtype=torch.int64, device=device), use_cache=False)
        finally:
            handle.remove()
            root.reshard()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module DDP (or DataParallel) wraps, whose parameter names carry no `module.`
    prefix (an FSDP2 module is its own)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def has_sharded_parts(model: torch.nn.Module) -> bool:
    """Whether any part of the model is sharded by FSDP (the FSDP1 wrapper or fully_shard),
    so that its full weights must be gathered (a collective) before they are saved."""
    if not process_group_ready():  # FSDP needs a process group; skips importing it otherwise
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel
    kinds: tuple[type, ...] = (FullyShardedDataParallel,)
    try:
        from torch.distributed.fsdp import FSDPModule  # public since torch 2.6
        kinds += (FSDPModule,)
    except ImportError:
        pass
    return any(isinstance(module, kinds) for module in model.modules())


def process_group_ready() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def global_rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return torch_dist.get_rank() if process_group_ready() else 0


def no_sync(module):
    """No gradient all-reduce (DDP) or reduce-scatter (FSDP2) on this micro-batch: the
    step's last one syncs."""
    if hasattr(module, "no_sync"):
        return module.no_sync()
    if is_sharded(module):
        return _no_gradient_sync(module)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _no_gradient_sync(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
