#!/usr/bin/env bash
# Issue #6 on the H200: inference throughput of the quickstart's unpruned model vs the
# pruned+retrained one, in PyTorch (cuDNN, channels_last, fp32/TF32 and bf16), at the
# trained 32x32 and at 224x224 (same weights: the graphs are convolutional up to a global
# pool). Also checks our ONNX exports against PyTorch's forward of the same artifacts.
# The artifacts travel in dist/artifacts/{unpruned,pruned} and dist/onnx/ (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/opt/torch/.venv/bin/python}
OUT=${OUT:-bench/outputs}
mkdir -p "$OUT"
$PY bench/gpu/torch_graph.py dist/artifacts/unpruned dist/artifacts/pruned --onnx dist/onnx/quickstart.onnx dist/onnx/pruned.onnx \
  --sizes 32,224 --batch "${BATCH:-256}" --json "$OUT/prune_throughput.json"
