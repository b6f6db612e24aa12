#!/usr/bin/env bash
# The quality checks on one CUDA GPU, on the shared Amazon Industrial split, all scored on the
# test split by `rere evaluate` with the same metric code: SFT, then SFT + ReRe, of
# SmolLM2-135M-Instruct (the trainer issue), and RPORec stage 1 and stage 1 + 2 from the same
# base model (the RPORec issue), for the ReRe / RPORec comparison.
#
#   bash benchmarks/gpu_quality_amazon.sh RUN_DIR [SFT_EPOCHS] [GRPO_STEPS] [EVAL_BEAMS]
#
# Needs ../shared/data/amazon-industrial-rere (or RERE_AMAZON_DATA=folder) and SmolLM2's offline package (rere.models).
# The split has no train split: both trainers use the leak-free windows of rere.data.examples
# (10,609 training examples). Every stage writes into RUN_DIR and prints its wall time; the last
# lines are the two metrics tables. Settings are sized for a short GPU lease, not the paper's
# full recipe (which runs GRPO for 2 epochs of 32 prompts x 16 beams a step).
set -euo pipefail
run=${1:?usage: gpu_quality_amazon.sh RUN_DIR [SFT_EPOCHS] [GRPO_STEPS] [EVAL_BEAMS]}
sft_epochs=${2:-3}
grpo_steps=${3:-100}
beams=${4:-50}
data=${RERE_AMAZON_DATA:-$(dirname "$0")/../../shared/data/amazon-industrial-rere}
mkdir -p "$run"
stage() { local name=$1; shift; local t0=$SECONDS; echo "== $name: $*"; "$@"; echo "== $name took $((SECONDS - t0)) s"; }

[ -d "$run/data" ] || stage prepare rere prepare rere-csv "$data" -o "$run/data"
[ -d "$run/sft/best" ] || stage sft rere sft --data "$run/data" --model smollm2 -o "$run/sft" \
    --epochs "$sft_epochs" --batch-size 32 --lr 3e-4 --eval-every 200 --eval-examples 200 --eval-beams 20 \
    --patience 4 --save-every 100000
[ -f "$run/eval-sft/metrics.json" ] || stage eval-sft rere evaluate --data "$run/data" --model "$run/sft/best" \
    -o "$run/eval-sft" --beams "$beams" --name SFT
[ -d "$run/rere/best" ] || stage rere rere train --data "$run/data" --model "$run/sft/best" -o "$run/rere" \
    --max-steps "$grpo_steps" --micro-batch 8 --eval-every 30 --eval-examples 200 --eval-beams 20 --save-every 100000
[ -f "$run/eval-rere/metrics.json" ] || stage eval-rere rere evaluate --data "$run/data" --model "$run/rere/best" \
    -o "$run/eval-rere" --beams "$beams" --name "SFT + ReRe"
[ -f "$run/rporec1/result.json" ] || stage rporec-stage1 rere rporec stage1 --data "$run/data" --model smollm2 \
    -o "$run/rporec1" --max-new-tokens 128 --eval-examples 500 --epochs 30 --batch-size 256 --random-negatives 1024
[ -f "$run/eval-rporec1/metrics.json" ] || stage eval-rporec1 rere evaluate --method rporec --data "$run/data" \
    --model smollm2 --head "$run/rporec1/head" -o "$run/eval-rporec1" --beams "$beams" --name "RPORec stage 1"
[ -d "$run/rporec2/best" ] || stage rporec-stage2 rere rporec stage2 --data "$run/data" --head "$run/rporec1/head" \
    -o "$run/rporec2" --max-steps "$grpo_steps" --num-generations 8 --prompts-per-step 16 --rollout-batch 16 \
    --eval-every 30 --eval-examples 200 --save-every 100000 --no-format-check
[ -f "$run/eval-rporec2/metrics.json" ] || stage eval-rporec2 rere evaluate --method rporec --data "$run/data" \
    --model "$run/rporec2/best" --head "$run/rporec1/head" -o "$run/eval-rporec2" --beams "$beams" \
    --name "RPORec stage 1 + 2"
cat "$run/eval-sft/metrics.md" "$run/eval-rere/metrics.md" "$run/eval-rporec1/metrics.md" "$run/eval-rporec2/metrics.md"
