"""rere.kernels: Triton kernels for constrained decoding, each beside its torch reference.

Installed as `rere.kernels` (setup.py maps this folder through `package_dir`).
"""
