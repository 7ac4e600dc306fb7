#!/usr/bin/env bash
# #8, throw-away: forward-kernel variants for 3x3 depthwise convolutions (dw_variants.cu),
# built with the GPU machine's nvcc and timed there. JSON lines and totals to $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/outputs}
mkdir -p "$OUT"
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
"$NVCC" -arch=sm_90 -O3 -std=c++17 -o "${TMPDIR:-/tmp}/dw_variants" bench/gpu/dw_variants.cu
"${TMPDIR:-/tmp}/dw_variants" | tee "$OUT/dw_variants.jsonl" | grep "^#"
