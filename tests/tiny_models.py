"""Small random causal LMs built from configs (no downloads): Llama and Qwen2 architectures."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

ARCHITECTURES = ("llama", "qwen2")


def tiny_model(arch: str, vocab_size: int, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(arch)
    # Larger output weights spread the logits, so that beams differ clearly (no near-ties).
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model.to(dtype).eval()


def tiny_bpe_tokenizer(texts: list[str], vocab_size: int = 400, special_tokens: tuple[str, ...] = ()):
    """A byte-level BPE learnt from `texts`, with "<eos>" (also the pad token): a few hundred
    tokens, where Qwen2's 151k would make every step of a tiny model ~15x slower."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                                       show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    if special_tokens:
        tokenizer.add_tokens(list(special_tokens))
    return tokenizer
