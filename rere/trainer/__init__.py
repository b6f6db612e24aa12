"""rere.trainer: SFT and ReRe GRPO on top of rere.sampler, the kernels and rere.data.

Nothing under rere.sampler imports this package; it is the top of the stack.
"""
