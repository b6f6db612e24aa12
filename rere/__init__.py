"""rere: reinforcement learning for LLM-based generative recommenders.

Submodules are imported on demand so that `rere.sampler` and `rere.index` stay usable
without the trainer's dependencies.
"""
__version__ = "0.1.0"
