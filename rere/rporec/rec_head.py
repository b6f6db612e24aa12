"""RecHead: scores every catalog item from the LLM's representation of prompt + reasoning.

    user vector  u = normalize(W_u h)                 h: the LLM's pooled state [H] (encoding.py)
    item vector  v_i = normalize(W_i e_i + r_i)       e_i: the LLM's encoding of item i's title [H],
                                                      r_i: a learned residual (zero at the start)
    score        s_i = <u, v_i> / temperature

The item encodings `e` come from the same LLM (`encoding.encode_items`) and are held by the
head as a buffer, not trained: recomputing them with gradient would mean running the LLM
over the whole catalog every step. The residual lets the head move items the LLM's text
encoding confuses (duplicate titles, titles that say little). Cosine scores with a
temperature keep the scale of the logits fixed whatever the encoder; `learn_temperature`
makes it a parameter (clamped to [0.01, 1]).

Retrieval over the full catalog goes through `retrieval.py` in item chunks: at 1M items no
`[batch, items]` matrix is built. `item_vectors()` computes all N item vectors once (chunked,
no gradient) for evaluation and rewards; training scores a sampled set of items through
`item_vectors(indices)`, with gradient.

`save(folder)` writes `head.json` (the config and the provenance: digests of the catalog
and of the encoder LLM the item encodings came from, and how to load that LLM) and
`head.safetensors` (parameters and encodings); `RecHead.load` checks the digests it is
given against the saved ones.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rere.files import check_format, write_folder_atomically, write_json
from rere.rporec.encoding import POOLINGS
from rere.rporec.retrieval import DEFAULT_CHUNK_ITEMS, catalog_ranks, topk_items

FORMAT, VERSION = "rere-rechead", 1
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0


@dataclass(frozen=True)
class RecHeadConfig:
    hidden_size: int  # the LLM's
    num_items: int
    dim: int = 256  # the shared user/item space
    pooling: str = "last"  # of the user's hidden states: "last" token, or "mean" over the reasoning
    temperature: float = 0.07
    learn_temperature: bool = False
    item_residual: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {self.temperature}")
        for name in ("hidden_size", "num_items", "dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class RecHead(nn.Module):
    def __init__(self, config: RecHeadConfig, item_encodings: torch.Tensor, *, provenance: dict | None = None):
        super().__init__()
        if tuple(item_encodings.shape) != (config.num_items, config.hidden_size):
            raise ValueError(f"item encodings {tuple(item_encodings.shape)}, expected [num_items, hidden_size] = "
                             f"[{config.num_items}, {config.hidden_size}]")
        self.config = config
        self.provenance = dict(provenance or {})
        self.user_proj = nn.Linear(config.hidden_size, config.dim)
        self.item_proj = nn.Linear(config.hidden_size, config.dim)
        self.residual = nn.Embedding(config.num_items, config.dim) if config.item_residual else None
        if self.residual is not None:
            nn.init.zeros_(self.residual.weight)
        log_t = torch.tensor(math.log(config.temperature))
        if config.learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        self.register_buffer("item_encodings", item_encodings.detach().float().clone())

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)

    def user_vectors(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, dim] unit vectors from pooled LLM states [B, H]."""
        return F.normalize(self.user_proj(hidden.to(self.user_proj.weight.dtype)), dim=-1)

    def item_vectors(self, indices: torch.Tensor | None = None, *, chunk_items: int = DEFAULT_CHUNK_ITEMS) -> torch.Tensor:
        """[n, dim] unit vectors of the items at `indices` (with gradient), or of every item
        (indices None: computed in chunks without gradient, for retrieval)."""
        if indices is not None:
            return self._items(indices.to(self.item_encodings.device))
        with torch.no_grad():
            return torch.cat([self._items(torch.arange(start, min(start + chunk_items, self.config.num_items),
                                                       device=self.item_encodings.device))
                              for start in range(0, self.config.num_items, chunk_items)])

    def _items(self, indices: torch.Tensor) -> torch.Tensor:
        vectors = self.item_proj(self.item_encodings[indices])
        if self.residual is not None:
            vectors = vectors + self.residual(indices)
        return F.normalize(vectors, dim=-1)

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, n] scores of unit user vectors [B, dim] against unit item vectors [n, dim]."""
        return users @ items.T / self.temperature

    # -- full-catalog retrieval (no gradient) ------------------------------------------------

    @torch.no_grad()
    def recommend(self, hidden: torch.Tensor, k: int, *, items: torch.Tensor | None = None,
                  exclude: list[list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, k], item indices [B, k]) over the whole catalog, best first. Pass
        `items=head.item_vectors()` to reuse the catalog's vectors across calls."""
        items = self.item_vectors() if items is None else items
        return topk_items(self.user_vectors(hidden), items, k, exclude=exclude, scale=float(1 / self.temperature))

    @torch.no_grad()
    def ranks(self, hidden: torch.Tensor, targets: torch.Tensor, *, items: torch.Tensor | None = None) -> torch.Tensor:
        """int64 [B]: each target's 0-based rank over the whole catalog."""
        items = self.item_vectors() if items is None else items
        return catalog_ranks(self.user_vectors(hidden), items, targets)

    # -- files -------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> Path:
        """`head.json` + `head.safetensors`, written aside and renamed into place."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

        def fill(staging: Path) -> None:
            save_file(state, str(staging / "head.safetensors"))
            info = {"format": FORMAT, "version": VERSION, "config": asdict(self.config),
                    "provenance": self.provenance}
            write_json(staging / "head.json", info)

        return write_folder_atomically(folder, fill)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, provenance: dict | None = None,
             device: str | torch.device = "cpu") -> "RecHead":
        """The head saved in `folder`. `provenance` (e.g. {"catalog": ...}): each given one
        must equal the saved one, or the head scores another catalog / encoder."""
        from safetensors.torch import load_file

        folder = Path(folder)
        path = folder / "head.json"
        if not path.exists():
            raise FileNotFoundError(f"{folder}: no RecHead here (head.json missing); train one with "
                                    "`rere rporec stage1`")
        info = json.loads(path.read_text())
        check_format(info, path, FORMAT, VERSION)
        for name, value in (provenance or {}).items():
            saved = info["provenance"].get(name)
            if saved != value:
                raise ValueError(f"{path}: the head was trained for {name} {saved}, this one is {value}; "
                                 "train a head for it (`rere rporec stage1`)")
        state = load_file(str(folder / "head.safetensors"), device=str(device))
        config = RecHeadConfig(**info["config"])
        head = cls(config, state["item_encodings"], provenance=info["provenance"])
        head.load_state_dict(state)
        return head.to(device)
