#!/usr/bin/env bash
# #8: loss after 50 steps, our GPU engine against the CPU path, over several seeds. Each seed
# picks other initial weights and other batches (examples/train_bench.rs `curve`). The GPU
# runs (fp32, tf32, bf16; all seeds of a model in one process) go to $OUT/curves_gpu.jsonl.
# The CPU reference (Burn on the CPU, and this engine on libtorch's CPU kernels) is better
# run on another machine (any with libtorch's CPU library: `train_bench curve ARCH 64 32 50
# SEED burn,torch_cpu [PTH]`; 2-4 min a seed on a 2-core VM): on the GPU machine, three
# streams of 4 threads managed one seed each in 320 s. With CPU=1 it runs them anyway, three
# models side by side, into $OUT/curves_cpu_*.jsonl.
# `python3 bench/gpu/curve_stats.py FILES...` compares them.
#
# Knobs: GPU_SEEDS (0-11), CPU=1 with CPU_SEEDS_R18, CPU_SEEDS_MNV2, CPU_SEEDS_FT
# (space-separated), CPU_TIMEOUT (s, per stream). Carry: dist/train_bench.xz, dist/assets.
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
BIN=$(bash bench/gpu/unpack.sh train_bench)
PTH=dist/assets/mobilenet_v2-b0353104.pth
export RAYON_NUM_THREADS=4 MATMUL_NUM_THREADS=4
cpu_stream() {  # name, seeds, args...
  local name=$1 seeds=$2; shift 2
  for s in $seeds; do "$BIN" curve "$1" 64 32 50 "$s" burn,torch_cpu ${2:-} >> "$OUT/curves_cpu_$name.jsonl" 2>> "$OUT/curves_cpu_$name.err"; done
}
T=${CPU_TIMEOUT:-400}
export -f cpu_stream; export BIN OUT
if [ "${CPU:-0}" = 1 ]; then
  timeout "$T" bash -c "cpu_stream r18 '${CPU_SEEDS_R18:-1 2 3}' resnet18" &
  timeout "$T" bash -c "cpu_stream mnv2 '${CPU_SEEDS_MNV2:-1 2 3}' mobilenet_v2" &
  timeout "$T" bash -c "cpu_stream mnv2_ft '${CPU_SEEDS_FT:-8 9 10}' mobilenet_v2 $PTH" &
fi
S=${GPU_SEEDS:-0-11}
timeout 200 "$BIN" curve resnet18 64 32 50 "$S" fp32,tf32,bf16 >> "$OUT/curves_gpu.jsonl" 2>> "$OUT/curves_gpu.err" || echo "gpu resnet18 failed/timed out"
timeout 200 "$BIN" curve mobilenet_v2 64 32 50 "$S" fp32,tf32,bf16 >> "$OUT/curves_gpu.jsonl" 2>> "$OUT/curves_gpu.err" || echo "gpu mobilenet_v2 failed/timed out"
timeout 200 "$BIN" curve mobilenet_v2 64 32 50 "$S" fp32,tf32,bf16 "$PTH" >> "$OUT/curves_gpu.jsonl" 2>> "$OUT/curves_gpu.err" || echo "gpu mobilenet_v2 ft failed/timed out"
echo "gpu curves done at $SECONDS s"
wait
echo "cpu curves done at $SECONDS s"
wc -l "$OUT"/curves_*.jsonl
