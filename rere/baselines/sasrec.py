"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), small and plain.

The standard non-LLM sequential baseline of the ReRe, D3 and BIGRec tables. Item
embeddings (id 0 = padding, item i = i + 1) plus learned positions go through causal
pre-norm self-attention blocks; the state at a sequence's last item, dotted with every
item embedding (the same embeddings: tied), scores the whole catalog.

Training is next-item prediction at every position of the training sequences with a
FULL softmax cross-entropy over the catalog. That is exact and simple, and cheap up to
~100k items: one step builds a [positions in the batch, catalog size] logit matrix
(batch 128 x length 50 x 100k items = 2.6 GB in fp32; lower --batch-size first). Larger
catalogs need sampled negatives (the paper's one negative per positive with binary
cross-entropy, or sampled softmax), which this implementation does not have.

Sequences are right-padded and positions count from the first item of the window, so
with the causal mask a real position never sees padding and the last history item's
state is read at index length - 1. Sequences longer than `max_len` + 1 are cut into
consecutive windows from the end, so every transition is trained on exactly once.

Early stopping: after each epoch, NDCG@10 on the validation examples (with the
identifier-level hits of `rere.metrics.target_ranks`); training stops after `patience`
epochs without a new best and the best epoch's weights are kept.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rere.catalog import Catalog
from rere.data.dataset import Example
from rere.files import check_format, write_atomically, write_json

FORMAT, VERSION = "rere-sasrec", 1
RANK_BATCH = 512  # histories scored at once: a [batch, catalog] score matrix


@dataclass(frozen=True)
class SASRecConfig:
    """Model size and training settings (the defaults suit a few thousand items on a CPU)."""

    max_len: int = 50  # history items the model reads (ReRe's data keeps at most 10)
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 128  # training windows per step
    epochs: int = 200  # at most; early stopping usually ends sooner
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_len", "hidden", "layers", "heads", "batch_size", "epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SASRec {name} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"SASRec hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SASRec dropout must be in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            raise ValueError(f"SASRec lr must be positive, got {self.lr}")


class SASRecNet(nn.Module):
    """The network: item ids [batch, length] (0 = padding) -> states [batch, length, hidden]."""

    def __init__(self, n_items: int, config: SASRecConfig):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)
        self.positions = nn.Embedding(config.max_len, config.hidden)
        for embedding in (self.items, self.positions):
            nn.init.normal_(embedding.weight, std=config.hidden ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.scale = math.sqrt(config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        block = nn.TransformerEncoderLayer(config.hidden, config.heads, dim_feedforward=config.hidden,
                                           dropout=config.dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, config.layers, norm=nn.LayerNorm(config.hidden),
                                            enable_nested_tensor=False)
        causal = torch.triu(torch.ones(config.max_len, config.max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.items(ids) * self.scale + self.positions.weight[:length]
        mask = self.causal[:length, :length]
        return self.blocks(self.dropout(x), mask=mask, is_causal=True)

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., n_items]: dot products with every item embedding."""
        return states @ self.items.weight[1:].T


class SASRec:
    """A SASRec recommender over one catalog: `fit` on item-id sequences, `rank` examples.

    `exclude_history` removes each user's history items from their list (default False,
    as the LLM is evaluated; see `Popularity`). Seeding uses torch's global generator.
    """

    def __init__(self, catalog: Catalog, config: SASRecConfig = SASRecConfig(), device: str = "cpu",
                 exclude_history: bool = False):
        self.catalog = catalog
        self.config = config
        self.device = torch.device(device)
        self.exclude_history = exclude_history
        torch.manual_seed(config.seed)
        self.net = SASRecNet(len(catalog), config).to(self.device)

    # -- training -----------------------------------------------------------------------

    def fit(self, sequences: Iterable[Sequence[str]], validation: Sequence[Example] | None = None,
            progress: bool = True) -> dict:
        """Train on next-item prediction; early-stop on `validation` NDCG@10 if given.

        Returns what happened: epochs run, best epoch, per-epoch loss (and validation
        NDCG@10), seconds.
        """
        config = self.config
        windows = self._windows(sequences)
        if len(windows) == 0:
            raise ValueError("no training sequence has two or more items: nothing to learn from")
        torch.manual_seed(config.seed)
        order = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, betas=(0.9, 0.98))
        log, best, best_state, since_best = [], -1.0, None, 0
        start = time.perf_counter()
        bar = tqdm(range(1, config.epochs + 1), desc="SASRec", unit="epoch", disable=not progress)
        for epoch in bar:
            self.net.train()
            total, steps = 0.0, 0
            for batch in torch.randperm(len(windows), generator=order).split(config.batch_size):
                window = windows[batch].to(self.device)
                labels = window[:, 1:]
                real = labels > 0
                states = self.net(window[:, :-1])[real]
                loss = F.cross_entropy(self.net.scores(states), labels[real] - 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
            entry = {"epoch": epoch, "loss": total / steps}
            if validation:
                entry["valid_NDCG@10"] = self.ndcg_at_10(validation)
                if entry["valid_NDCG@10"] > best:
                    best, best_state, since_best = entry["valid_NDCG@10"], copy.deepcopy(self.net.state_dict()), 0
                else:
                    since_best += 1
            log.append(entry)
            bar.set_postfix({k: f"{v:.4f}" for k, v in entry.items() if k != "epoch"})
            if validation and since_best >= config.patience:
                break
        bar.close()
        if best_state is not None:
            self.net.load_state_dict(best_state)
        best_epoch = max(log, key=lambda e: e["valid_NDCG@10"])["epoch"] if validation else len(log)
        return {"epochs_run": len(log), "best_epoch": best_epoch,
                "best_valid_NDCG@10": best if validation else None, "training_windows": len(windows),
                "seconds": time.perf_counter() - start, "log": log}

    def ndcg_at_10(self, examples: Sequence[Example]) -> float:
        """Mean NDCG@10 of `examples` (identifier-level hits, as in `rere.metrics`)."""
        from rere.metrics import target_ranks

        k = min(10, len(self.catalog))
        ranks = target_ranks(self.rank(examples, k), self._positions([e.target for e in examples]), self.catalog)
        return float(np.where(ranks >= 0, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0).mean())

    def _windows(self, sequences: Iterable[Sequence[str]]) -> torch.Tensor:
        """int64 [windows, max_len + 1]: item ids + 1, right-padded with 0. A sequence is cut
        from its end into windows that share one item, so each transition appears once."""
        span = self.config.max_len + 1
        rows = []
        for sequence in sequences:
            ids = (self._positions(sequence) + 1).tolist()
            for end in range(len(ids), 1, -self.config.max_len):
                window = ids[max(0, end - span): end]
                rows.append(window + [0] * (span - len(window)))
        return torch.tensor(rows, dtype=torch.long).reshape(-1, span)

    # -- ranking ------------------------------------------------------------------------

    @torch.no_grad()
    def rank(self, examples: Sequence[Example], k: int) -> np.ndarray:
        """int64 [len(examples), k]: the top-k catalog positions for each example's history
        (its last `max_len` items), best first; -1 only where `exclude_history` leaves
        fewer than k items."""
        if k < 1 or k > len(self.catalog):
            raise ValueError(f"k must be in 1..{len(self.catalog)} (the catalog size), got {k}")
        self.net.eval()
        ranked = np.empty((len(examples), k), dtype=np.int64)
        for start in range(0, len(examples), RANK_BATCH):
            chunk = examples[start: start + RANK_BATCH]
            ids = torch.zeros(len(chunk), self.config.max_len, dtype=torch.long)
            lengths = torch.ones(len(chunk), dtype=torch.long)  # an empty history reads the padding
            for row, example in enumerate(chunk):
                history = self._positions(example.history[-self.config.max_len:]) + 1
                ids[row, : len(history)] = torch.from_numpy(history)
                lengths[row] = max(1, len(history))
            states = self.net(ids.to(self.device))[torch.arange(len(chunk)), lengths.to(self.device) - 1]
            scores = self.net.scores(states)
            if self.exclude_history:
                rows = [row for row, e in enumerate(chunk) for _ in e.history]
                columns = [self.catalog.index_of(item) for e in chunk for item in e.history]
                scores[rows, columns] = -math.inf
            top = scores.topk(k, dim=1)
            positions = torch.where(torch.isfinite(top.values), top.indices, -1)
            ranked[start: start + len(chunk)] = positions.cpu().numpy()
        return ranked

    def _positions(self, items: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.catalog.index_of(item) for item in items), dtype=np.int64, count=len(items))

    # -- files --------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `model.pt` (state dict) and `config.json` into `folder`, each atomically;
        config.json is written last, so its presence means the model is complete."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        info = {"format": FORMAT, "version": VERSION, "items": len(self.catalog),
                "catalog_sha256": _fingerprint(self.catalog), "config": asdict(self.config)}
        write_atomically(folder / "model.pt", lambda f: torch.save(self.net.state_dict(), f))
        write_json(folder / "config.json", info)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, catalog: Catalog, device: str = "cpu",
             exclude_history: bool = False) -> "SASRec":
        """A model saved by `save`; its catalog must be the one it was trained on."""
        folder = Path(folder)
        path = folder / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{folder} holds no saved SASRec model (no config.json)")
        info = json.loads(path.read_text())
        check_format(info, path, FORMAT, VERSION)
        if info["items"] != len(catalog) or info["catalog_sha256"] != _fingerprint(catalog):
            raise ValueError(f"{path}: the model was trained on another catalog ({info['items']} items) "
                             f"than the one given ({len(catalog)} items)")
        model = cls(catalog, SASRecConfig(**info["config"]), device, exclude_history)
        state = torch.load(folder / "model.pt", map_location=model.device, weights_only=True)
        model.net.load_state_dict(state)
        return model


def _fingerprint(catalog: Catalog) -> str:
    """sha256 of the item ids in order: a model's rows are tied to catalog positions."""
    return hashlib.sha256("\n".join(catalog.ids).encode()).hexdigest()


