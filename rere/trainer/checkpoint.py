"""Training checkpoints: one folder per saved step, whole or absent.

A checkpoint is written into a hidden staging folder beside its destination, flushed to disk,
and only then renamed into place; `latest` is pointed at it after that. A run killed at any
moment therefore leaves the previous checkpoint and `latest` as they were, and never a half
folder named like a checkpoint. Checkpoints older than the last `keep` are removed last.

run_dir/checkpoint-0000100/
    model.safetensors   weights; tied weights are stored once, the file's metadata maps each
                        dropped alias to the name kept (safetensors' `save_model` convention)
    optimizer.pt        optimizer state (if an optimizer was given)
    scheduler.pt        learning-rate scheduler state (if one was given)
    rng-rank{r}.pt      Python, NumPy, torch CPU and CUDA generator states of rank r
    state.json          {"format", "version", "step", "data_state", "extra"}
    config.yaml         the run's configuration (if given; plain data, see config_to_dict)
run_dir/latest          the newest checkpoint's folder name

Under torch.distributed every rank calls `save_checkpoint` and `load_checkpoint` (gathering
FSDP shards is collective): rank 0 writes the shared files, every rank its own RNG file, and
all ranks read the same folder, so the run directory must be on a filesystem they share. If
any rank fails while saving, every rank raises instead of waiting at a barrier forever.
"""
from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from safetensors import safe_open
from safetensors.torch import save_file, save_model
from torch import nn

from rere.files import check_format, write_atomically, write_folder_atomically
from rere.distributed import global_rank, has_sharded_parts, process_group_ready, unwrap

FORMAT, VERSION = "rere-checkpoint", 1
LATEST = "latest"
_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}"


def save_checkpoint(run_dir: str | os.PathLike, *, step: int, model: nn.Module, optimizer=None, scheduler=None,
                    data_state: dict | None = None, config: dict | None = None, extra: dict | None = None,
                    extra_models: dict[str, nn.Module] | None = None, keep: int = 2) -> Path:
    """Write `run_dir/checkpoint-{step:07d}/` atomically, point `latest` at it, and delete all
    but the newest `keep` checkpoints (never this one). Returns the folder.

    `model` may be plain, DDP-wrapped or FSDP-sharded; `data_state` and `extra` must be
    JSON-serialisable (rank 0's are kept). `extra_models` (e.g. a GRPO reference model that
    drifts with soft syncs; plain or FSDP-sharded like `model`) go in as `{name}.safetensors`,
    inside the same atomic folder. Call on every rank when distributed.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: at least the new checkpoint must be kept")
    run_dir = Path(run_dir)
    final = run_dir / checkpoint_name(step)
    staging = run_dir / f".{final.name}.tmp"  # the same on every rank: they all write into it
    state = {"format": FORMAT, "version": VERSION, "step": step, "data_state": data_state, "extra": extra}
    write_model, optimizer_state = _gather(model, optimizer)  # collective under FSDP: every rank
    write_extras = {name: _gather(module, None)[0] for name, module in (extra_models or {}).items()}

    def write_shared() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(run_dir)
        staging.mkdir()
        write_model(staging / "model.safetensors")
        for name, write_extra in write_extras.items():
            write_extra(staging / f"{name}.safetensors")
        if optimizer_state is not None:
            torch.save(optimizer_state, staging / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        (staging / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        if config is not None:
            (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def write_rng() -> None:
        path = staging / f"rng-rank{global_rank()}.pt"
        torch.save(_rng_state(), path)
        _fsync(path)  # rank 0's flush below may not reach another host's writes

    def publish() -> None:
        _fsync_tree(staging)
        if final.exists():  # the same step saved again: the new one replaces it
            _retire(final)
        os.replace(staging, final)
        _fsync(run_dir)
        write_atomically(run_dir / LATEST, final.name + "\n")
        _prune(run_dir, keep, final)

    _step(write_shared)
    _step(write_rng, every_rank=True)
    _step(publish)
    return final


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer=None, scheduler=None,
                    extra_models: dict[str, nn.Module] | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Restore a checkpoint into `model` (strictly), `optimizer`, `scheduler` and this rank's
    RNGs. `path` is a checkpoint folder or a run directory (then its latest checkpoint).

    Returns {"step", "data_state", "extra", "config"} (config None when none was saved).
    """
    folder = _resolve(path)
    state_path = folder / "state.json"
    state = _read(state_path, lambda p: json.loads(p.read_text()))
    check_format(state, state_path, FORMAT, VERSION)
    _load_weights(folder / "model.safetensors", model, str(map_location))
    for name, module in (extra_models or {}).items():
        _load_weights(folder / f"{name}.safetensors", module, str(map_location))
    if optimizer is not None:
        _load_optimizer(folder / "optimizer.pt", model, optimizer, map_location)
    if scheduler is not None:
        scheduler.load_state_dict(_read(folder / "scheduler.pt", _torch_loader(map_location)))
    _restore_rng(folder)
    config_path = folder / "config.yaml"
    config = _read(config_path, lambda p: yaml.safe_load(p.read_text())) if config_path.exists() else None
    return {"step": state["step"], "data_state": state["data_state"], "extra": state["extra"], "config": config}


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder `latest` names; if it is gone (a crash while the same step was being saved
    again), the highest-numbered checkpoint folder. None when there is no checkpoint."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if pointer.is_file():
        folder = run_dir / pointer.read_text().strip()
        if folder.is_dir():
            return folder
        warnings.warn(f"{pointer} names {folder.name}, which does not exist: using the newest checkpoint folder")
    found = sorted(_checkpoints(run_dir), key=_step_of) if run_dir.is_dir() else []
    return found[-1] if found else None


# -- saving --------------------------------------------------------------------------------

def save_pretrained(model, tokenizer, folder: Path) -> None:
    """A plain Hugging Face folder (weights, config, tokenizer) that `rere evaluate --model`
    loads, written aside and renamed into place so that a crash never leaves half of one.
    LoRA adapters are merged into a copy (the training model keeps them). Call on every
    rank when distributed: an FSDP-sharded model is gathered first (a collective), then
    rank 0 writes."""
    state_dict = None
    if has_sharded_parts(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    elif hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()

    def fill(staging: Path) -> None:
        model.save_pretrained(staging, state_dict=state_dict)
        tokenizer.save_pretrained(staging)

    _step(lambda: write_folder_atomically(folder, fill))


def _gather(model: nn.Module, optimizer) -> tuple[Callable[[Path], None], dict | None]:
    """(a function writing the weights file, the optimizer state), taken on every rank.

    FSDP shards are gathered here into full CPU tensors on rank 0 (other ranks get empty
    states); an unsharded model is read by `save_model` itself, which drops tied aliases.
    """
    if has_sharded_parts(model):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        optimizer_state = get_optimizer_state_dict(model, optimizer, options=options) if optimizer else None
        return (lambda path: _save_full_state(model, weights, path)), optimizer_state
    module = unwrap(model)
    optimizer_state = optimizer.state_dict() if optimizer is not None else None
    return (lambda path: save_model(module, str(path))), optimizer_state


def _save_full_state(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """A gathered state holds tied weights as separate copies: store each once, with the
    alias -> kept-name metadata of `save_model`. Ties are found by parameter identity, so
    names must match the state's keys (true for fully_shard; FSDP1 keeps both copies)."""
    tied = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in weights:
            tied[id(param)].append(name)
    aliases = {alias: names[0] for names in tied.values() for alias in names[1:]}
    kept = {name: tensor.contiguous() for name, tensor in weights.items() if name not in aliases}
    save_file(kept, str(path), metadata={"format": "pt", **aliases})


def _rng_state() -> dict:
    numpy_name, numpy_key, numpy_pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        # Plain values, so that the file loads with torch.load(weights_only=True).
        "numpy": (numpy_name, numpy_key.tolist(), numpy_pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _remove_leftovers(run_dir: Path) -> None:
    """Staging and half-deleted folders of interrupted saves: never valid, each a full model."""
    for leftover in run_dir.glob(".checkpoint-*"):
        shutil.rmtree(leftover)


def _prune(run_dir: Path, keep: int, newest: Path) -> None:
    others = sorted((p for p in _checkpoints(run_dir) if p != newest), key=_step_of)
    for old in others[:max(0, len(others) - (keep - 1))]:
        _retire(old)


def _retire(folder: Path) -> None:
    """Hide the folder first, so that a crash during the slow delete leaves no partial
    folder that looks like a checkpoint."""
    hidden = folder.with_name(f".{folder.name}.old")
    os.replace(folder, hidden)
    shutil.rmtree(hidden)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        _fsync(path)
    _fsync(folder)


# -- loading -------------------------------------------------------------------------------

def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint folder or run directory")
    if _NAME.fullmatch(path.name) or (path / "state.json").exists():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path} holds no checkpoint (no {LATEST} file, no checkpoint-* folder)")
    return found


def _read(path: Path, reader: Callable[[Path], object]):
    """`reader(path)`, with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the checkpoint")
    try:
        return reader(path)
    except Exception as error:
        raise ValueError(f"{path} is damaged or truncated: {error}") from error


def _torch_loader(map_location) -> Callable[[Path], object]:
    return lambda path: torch.load(path, map_location=map_location, weights_only=True)


def _read_weights(path: Path, device: str) -> dict[str, torch.Tensor]:
    """The stored tensors, plus every tied alias pointing at the tensor kept for it."""
    with safe_open(str(path), framework="pt", device=device) as f:
        weights = {name: f.get_tensor(name) for name in f.keys()}
        metadata = f.metadata() or {}
    for alias, kept in metadata.items():
        if kept in weights and alias not in weights:
            weights[alias] = weights[kept]
    return weights


def _load_weights(path: Path, model: nn.Module, device: str) -> None:
    weights = _read(path, lambda p: _read_weights(p, device))
    try:
        if has_sharded_parts(model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
            result = set_model_state_dict(model, weights,
                                          options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            result = unwrap(model).load_state_dict(weights, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path} does not fit the model: {error}") from error
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path} does not fit the model: missing keys {sorted(result.missing_keys)}, "
                         f"unexpected keys {sorted(result.unexpected_keys)}")


def _load_optimizer(path: Path, model: nn.Module, optimizer, map_location) -> None:
    state = _read(path, _torch_loader(map_location))
    try:
        if has_sharded_parts(model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ValueError(f"{path} does not fit the optimizer: {error}") from error


def _restore_rng(folder: Path) -> None:
    path = folder / f"rng-rank{global_rank()}.pt"
    if not path.exists():  # resumed on more ranks than were saved
        warnings.warn(f"{path} does not exist: this rank's random generators are not restored")
        return
    state = _read(path, lambda p: torch.load(p, weights_only=True))
    random.setstate(state["python"])
    numpy_name, numpy_key, *rest = state["numpy"]
    np.random.set_state((numpy_name, np.array(numpy_key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- folders, models and ranks -------------------------------------------------------------

def _checkpoints(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]


def _step_of(folder: Path) -> int:
    return int(_NAME.fullmatch(folder.name).group(1))


def _step(action: Callable[[], None], every_rank: bool = False) -> None:
    """Run `action` on rank 0 (or every rank), then wait for all ranks. A rank's failure
    reaches every rank as an exception, so none waits forever at a later collective."""
    error = None
    if every_rank or global_rank() == 0:
        try:
            action()
        except Exception as caught:  # re-raised below, after the other ranks have heard of it
            error = caught
    if process_group_ready():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        failed = torch.tensor([error is not None], dtype=torch.int32, device=device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if error is None and failed.item():
            raise RuntimeError("saving the checkpoint failed on another rank (see its error)")
    if error is not None:
        raise error
