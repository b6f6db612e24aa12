#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go (about 6 minutes on an H100):
#
#   bash benchmarks/gpu_checks.sh OUT_DIR
#
# 1. the tests marked `gpu`, and the kernel, sampler and log-softmax tests, which run their
#    Triton kernels compiled on the GPU when one is present (TRITON_INTERPRET on the CPU);
# 2. the GPU benchmarks of the beam-step kernels and the selective log-softmax.
# Logs and JSON figures land in OUT_DIR. The sampler and GRPO-step benchmarks
# (gpu_sampler.py, gpu_grpo_step.py) and the quality run (gpu_quality_amazon.sh) are separate.
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$out/tests_gpu.log" | tail -25
python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_beam_kernels.py tests/test_selective_log_softmax.py \
    tests/test_beam_search.py tests/test_sample.py tests/test_sampler_adapters.py 2>&1 \
    | tee "$out/tests_kernels.log" | tail -25
python3 benchmarks/gpu_kernels.py --json "$out/gpu_kernels.json" 2>&1 | tee "$out/gpu_kernels.log" | tail -30
python3 benchmarks/gpu_selective_log_softmax.py 2>&1 | tee "$out/gpu_selective_log_softmax.log" | tail -30
