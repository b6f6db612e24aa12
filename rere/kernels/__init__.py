"""rere.kernels: the decode step and the trainer's log-probs, each op in Triton beside its
torch reference twin (same signature; the CPU path). `backend=None` picks Triton on CUDA.

They live inside the package, not in a top-level `kernels/` folder: transformers (>= 5.25)
depends on Hugging Face's `kernels` distribution, and a top-level folder of that name in a
checkout shadowed it for anything started from the repository root.
"""
from rere.kernels.beam_step import beam_step
from rere.kernels.beam_topk import BeamCandidates, beam_topk
from rere.kernels.fused_linear_selective_log_softmax import fused_linear_selective_log_softmax
from rere.kernels.selective_log_softmax import selective_log_softmax
from rere.kernels.trie_masked_log_softmax import AllowedScores, trie_masked_log_softmax

__all__ = [
    "AllowedScores",
    "BeamCandidates",
    "beam_step",
    "beam_topk",
    "fused_linear_selective_log_softmax",
    "selective_log_softmax",
    "trie_masked_log_softmax",
]
