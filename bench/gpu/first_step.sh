#!/usr/bin/env bash
# #8: the first training step of MobileNetV2 (bf16, batch 128, 224x224: the slowest to
# start) with and without a warm CUDA JIT cache, in one call. cuDNN 9 compiles some engines
# at run time (depthwise convolutions in bf16 among them) and the driver caches what it
# compiles from PTX in CUDA_CACHE_PATH, which `taoflow run` points into the store
# (<store>/cuda-jit). Runs, in this order, each a new process (examples/train_bench.rs
# `speed`): cold cache on a fresh machine; cold cache with the machine's page cache warm;
# each of the two caches again (warm); CUDA_CACHE_DISABLE=1; PyTorch's peer with a cold,
# then a warm cache; PyTorch's first step under its profiler (bench/gpu/first_step_probe.py).
# Then the quickstart with the taoflow binary on the GPU, and what it left in cache/cuda-jit.
# JSON lines to $OUT/first_step.jsonl. Carry: dist/train_bench.xz, dist/taoflow.xz, dist/assets.
# QUICKSTART_ONLY=1: only the quickstart part.
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
BIN=$(bash bench/gpu/unpack.sh train_bench)
RES="$OUT/first_step.jsonl"
J=${TMPDIR:-/tmp}/jit-$$
one() {  # label, command...
  local label=$1; shift
  local line
  line=$(timeout 120 "$@" 2> "$OUT/first_step.err" | tail -1)
  if [ -z "$line" ]; then echo "FAILED: $label"; tail -3 "$OUT/first_step.err"; return; fi
  python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; d.pop("infer_rounds",None); d.pop("top_ops_first_step",None) if "profile" not in sys.argv[1] else None; print(json.dumps(d))' "$label" "$line" | tee -a "$RES"
}
if [ "${QUICKSTART_ONLY:-0}" != 1 ]; then
one cold_fresh_machine env CUDA_CACHE_PATH=$J/a "$BIN" speed mobilenet_v2 224 128 bf16
one cold env CUDA_CACHE_PATH=$J/b "$BIN" speed mobilenet_v2 224 128 bf16
one warm env CUDA_CACHE_PATH=$J/a "$BIN" speed mobilenet_v2 224 128 bf16
one warm_2 env CUDA_CACHE_PATH=$J/b "$BIN" speed mobilenet_v2 224 128 bf16
one no_jit_cache env CUDA_CACHE_DISABLE=1 "$BIN" speed mobilenet_v2 224 128 bf16
one tf32_cold env CUDA_CACHE_PATH=$J/c "$BIN" speed mobilenet_v2 224 128 tf32
one tf32_warm env CUDA_CACHE_PATH=$J/c "$BIN" speed mobilenet_v2 224 128 tf32
one pytorch_cold env CUDA_CACHE_PATH=$J/t $PY bench/gpu/train_torch.py mobilenet_v2 224 128 bf16 --fused
one pytorch_warm env CUDA_CACHE_PATH=$J/t $PY bench/gpu/train_torch.py mobilenet_v2 224 128 bf16 --fused
one pytorch_profile_warm env CUDA_CACHE_PATH=$J/t $PY bench/gpu/first_step_probe.py mobilenet_v2 224 128 bf16
du -sk $J/* | sed 's/^/jit cache KiB: /'
fi
if [ -f dist/taoflow.xz ]; then
  TF=$(bash bench/gpu/unpack.sh)
  export TAOFLOW_ASSETS=${TAOFLOW_ASSETS:-$PWD/dist/assets}
  rm -rf cache/cuda-jit
  timeout 120 "$TF" run pipelines/quickstart.toml --device cuda > "$OUT/quickstart.log" 2>&1; echo "quickstart exit $?"
  grep -E "ready in|epoch 1/" cache/logs/quickstart/train.log
  echo "cache/cuda-jit: $(find cache/cuda-jit -type f 2>/dev/null | wc -l) files, $(du -sk cache/cuda-jit 2>/dev/null | cut -f1) KiB"
  # again, the train stage forced, with the store's JIT cache warm
  timeout 120 "$TF" run pipelines/quickstart.toml --device cuda --force=train > "$OUT/quickstart2.log" 2>&1; echo "quickstart (train forced) exit $?"
  grep -E "ready in|epoch 1/" cache/logs/quickstart/train.log
fi
