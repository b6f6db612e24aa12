"""rere.kernels: the decode step and the trainer's log-probs, each op in Triton beside its
torch reference twin (same signature; the CPU path). `backend=None` picks Triton on CUDA.

Installed as `rere.kernels` (setup.py maps this folder through `package_dir`).
"""
from rere.kernels.beam_topk import BeamCandidates, beam_topk
from rere.kernels.trie_masked_log_softmax import AllowedScores, trie_masked_log_softmax

__all__ = ["AllowedScores", "BeamCandidates", "beam_topk", "trie_masked_log_softmax"]
