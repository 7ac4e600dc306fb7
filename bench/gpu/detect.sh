#!/usr/bin/env bash
# Issue #20 on the GPU machine: DetectNet_v2 (ResNet-18, stride 16) training and inference
# img/s at 1248x384, batch 16, our libtorch engine (examples/detect_bench.rs) against the
# PyTorch peer (bench/gpu/detect_torch.py), tf32 and bf16, alternating, in one call.
# Carry: dist/detect_bench.xz.
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
BIN=$(bash bench/gpu/unpack.sh detect_bench)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for round in $(seq ${ROUNDS:-2}); do
  for prec in tf32 bf16; do
    "$BIN" resnet18 1248 384 16 $prec ${STEPS:-60} | tee -a "$OUT/detect.jsonl"
    $PY bench/gpu/detect_torch.py resnet18 1248 384 16 $prec ${STEPS:-60} | tee -a "$OUT/detect.jsonl"
  done
done
