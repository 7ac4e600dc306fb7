#!/usr/bin/env bash
# #8: which convolutions make MobileNetV2's first bf16 step slow, and whether running the
# depthwise ones another way avoids it (bench/gpu/first_step_variants.py), PyTorch alone,
# each run a new process, all sharing one CUDA JIT cache; every run twice (forward order,
# then reverse). JSON lines to $OUT/variants.jsonl. (The `ours_dw_*` lines in
# bench/results/first_step_variants_2026-11-29.jsonl came from a throw-away build of our
# engine with the same depthwise variants, not kept.)
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
export CUDA_CACHE_PATH=${TMPDIR:-/tmp}/jit-variants
RES="$OUT/variants.jsonl"
runs=(${RUNS:-"convs nchw tf32" "step base" "step dw-nchw" "step tf32" "step tf32-dw-nchw"})
$PY -c 'import torch; torch.zeros(1, device="cuda")'  # page cache, driver
for pass in 1 2; do
  order=("${runs[@]}")
  [ $pass = 2 ] && order=($(for ((i=${#runs[@]}-1; i>=0; i--)); do echo "${runs[$i]// /_}"; done))
  for r in "${order[@]}"; do
    timeout 120 $PY bench/gpu/first_step_variants.py ${r//_/ } 2>>"$OUT/variants.err" | tee -a "$RES"
  done
done
