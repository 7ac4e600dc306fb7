#!/usr/bin/env bash
# #8: how far apart two runs of the *same* algorithm end after 50 steps (train_bench curve,
# 64², batch 32, SGD momentum 0.9), the resolution of any "within 1 % of the CPU path" check:
# - GPU, all seeds: fp32 twice (cuDNN's run-to-run nondeterminism) and fp32+ulp (the
#   initial weights moved by one ulp: f32 rounding alone);
# - CPU (libtorch): torch64 (this engine in f64), torch_cpu (f32) and torch_cpu+ulp, for
#   some seeds in parallel streams of 4 threads.
# Output: $OUT/noise_gpu.jsonl, $OUT/noise_cpu_*.jsonl; compare with
# `python3 bench/gpu/curve_stats.py FILES... --ref ENGINE`.
# Knobs: GPU_SEEDS (0-11), CPU_STREAMS ("0,1 2,3 4,5 6,7": one stream per word, scratch
# MobileNetV2), FT_STREAMS ("0,1": fine-tuned), CPU_TIMEOUT (s, 520).
# Carry: dist/train_bench.xz, dist/assets.
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
BIN=$(bash bench/gpu/unpack.sh train_bench)
PTH=dist/assets/mobilenet_v2-b0353104.pth
T=${CPU_TIMEOUT:-520}
i=0
cpu_stream() {  # name, seeds, [pretrained weights]: one background stream of 4 threads
  OMP_NUM_THREADS=4 MKL_NUM_THREADS=4 timeout "$T" "$BIN" curve mobilenet_v2 64 32 50 "$2" torch_cpu,torch_cpu+ulp,torch64 ${3:-} >> "$OUT/noise_cpu_$1_$i.jsonl" 2>> "$OUT/noise_cpu.err" &
  i=$((i + 1))
}
for s in ${CPU_STREAMS:-0,1 2,3 4,5 6,7}; do cpu_stream mnv2 "$s"; done
for s in ${FT_STREAMS:-0,1}; do cpu_stream ft "$s" "$PTH"; done
S=${GPU_SEEDS:-0-11}
for args in "resnet18" "mobilenet_v2" "mobilenet_v2 $PTH"; do
  set -- $args
  timeout 200 "$BIN" curve "$1" 64 32 50 "$S" fp32,fp32,fp32+ulp ${2:-} >> "$OUT/noise_gpu.jsonl" 2>> "$OUT/noise_gpu.err" || echo "gpu $args failed/timed out"
done
echo "gpu done at $SECONDS s"
wait
echo "cpu done at $SECONDS s"
wc -l "$OUT"/noise_*.jsonl
