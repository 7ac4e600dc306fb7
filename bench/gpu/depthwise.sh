#!/usr/bin/env bash
# #8: our depthwise-convolution kernels (kernels/depthwise.cu) instead of cuDNN's NHWC
# depthwise engines, which cuDNN compiles at run time in every process. In one call:
#  1. the GPU tests against cuDNN and the unfused layers (model::torch::tests::depthwise*, ::fused*, from
#     the lib test binary dist/taoflow_tests.xz, when carried);
#  2. each of MobileNetV2's depthwise convolutions alone, ours vs cuDNN (train_bench
#     dwbench, $OUT/dwbench.jsonl; DWBENCH=0 skips it), 3x3 on the strip kernels and (STRIPS_AB=1, default) on
#     the one-output-per-thread kernels (TAOFLOW_DW_STRIPS=0); MobileNetV2 224x224 batch 128 (examples/train_bench.rs `speed`), each a new process:
#     bf16 with a cold, then a warm kernel/JIT cache, bf16 with cuDNN's depthwise
#     (TAOFLOW_DEPTHWISE=cudnn), tf32 both ways, then PyTorch's peers (fused Adam);
#  3. loss over 50 steps, MobileNetV2 from scratch and fine-tuned, seeds 0-11 (CURVES=1);
#  4. the quickstart and pipelines/mobilenet224-gpu.toml's train stage with the taoflow
#     binary (PIPES=1).
# JSON lines to $OUT/depthwise.jsonl. Carry: dist/train_bench.xz, dist/taoflow.xz,
# dist/taoflow_tests.xz, dist/assets.
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
BIN=$(bash bench/gpu/unpack.sh train_bench)
RES="$OUT/depthwise.jsonl"
J=${TMPDIR:-/tmp}/jit-dw
if [ -f dist/taoflow_tests.xz ]; then
  T=$(bash bench/gpu/unpack.sh taoflow_tests)
  TAOFLOW_REQUIRE_GPU=1 timeout 120 "$T" model::torch::tests::depthwise model::torch::tests::fused --test-threads 1 2>&1 | grep -E "^test |test result|panicked|differs" | tee "$OUT/tests.log"
fi
dwbench() {  # label, env...
  local label=$1; shift
  timeout 120 env "$@" "$BIN" dwbench 128 2>> "$OUT/depthwise.err" | python3 -c '
import json, sys
label = sys.argv[1]
print(f"{label}: depthwise conv (batch 128)  fwd ms ours/cudnn   fwd+bwd ms ours/cudnn   first s ours/cudnn")
for l in sys.stdin:
    d = json.loads(l)
    d["label"] = label
    print(json.dumps(d), file=open(sys.argv[2], "a"))
    print("{dtype:9} c{channels:<4} {side:>3}px s{stride}   {ours_fwd_ms:.3f} / {cudnn_fwd_ms:.3f}        {ours_fwd_bwd_ms:.3f} / {cudnn_fwd_bwd_ms:.3f}          {ours_first_s:.2f} / {cudnn_first_s:.2f}".format(**d))
' "$label" "$OUT/dwbench.jsonl"
}
# 3x3 convolutions on the strip kernels (default), then on the one-output-per-thread ones
if [ "${DWBENCH:-1}" = 1 ]; then
  dwbench strips
  [ "${STRIPS_AB:-1}" = 1 ] && dwbench simple TAOFLOW_DW_STRIPS=0
fi
one() {  # label, env..., -- command...
  local label=$1; shift
  local line
  line=$(timeout 120 env "$@" 2>> "$OUT/depthwise.err" | tail -1)
  if [ -z "$line" ]; then echo "FAILED: $label"; tail -3 "$OUT/depthwise.err"; return; fi
  python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; d.pop("infer_rounds",None); d.pop("top_ops_first_step",None); print(json.dumps(d))' "$label" "$line" | tee -a "$RES"
}
one bf16_ours_cold CUDA_CACHE_PATH=$J/a TAOFLOW_DEPTHWISE=ours "$BIN" speed mobilenet_v2 224 128 bf16
one bf16_ours_warm CUDA_CACHE_PATH=$J/a TAOFLOW_DEPTHWISE=ours "$BIN" speed mobilenet_v2 224 128 bf16
[ "${STRIPS_AB:-1}" = 1 ] && one bf16_ours_simple CUDA_CACHE_PATH=$J/a TAOFLOW_DEPTHWISE=ours TAOFLOW_DW_STRIPS=0 "$BIN" speed mobilenet_v2 224 128 bf16
one bf16_cudnn_warm CUDA_CACHE_PATH=$J/a TAOFLOW_DEPTHWISE=cudnn "$BIN" speed mobilenet_v2 224 128 bf16
one bf16_ours_warm2 CUDA_CACHE_PATH=$J/a TAOFLOW_DEPTHWISE=ours "$BIN" speed mobilenet_v2 224 128 bf16
one tf32_ours_warm CUDA_CACHE_PATH=$J/a TAOFLOW_DEPTHWISE=ours "$BIN" speed mobilenet_v2 224 128 tf32
[ "${STRIPS_AB:-1}" = 1 ] && one tf32_ours_simple CUDA_CACHE_PATH=$J/a TAOFLOW_DEPTHWISE=ours TAOFLOW_DW_STRIPS=0 "$BIN" speed mobilenet_v2 224 128 tf32
one tf32_cudnn_warm CUDA_CACHE_PATH=$J/a TAOFLOW_DEPTHWISE=cudnn "$BIN" speed mobilenet_v2 224 128 tf32
one tf32_ours_warm2 CUDA_CACHE_PATH=$J/a TAOFLOW_DEPTHWISE=ours "$BIN" speed mobilenet_v2 224 128 tf32
# the automatic policy with a long planned run (moves training to cuDNN) and a short one
one bf16_auto_long CUDA_CACHE_PATH=$J/a PLAN_STEPS=100000 "$BIN" speed mobilenet_v2 224 128 bf16
one bf16_auto_short CUDA_CACHE_PATH=$J/a PLAN_STEPS=300 "$BIN" speed mobilenet_v2 224 128 bf16
one tf32_auto_long CUDA_CACHE_PATH=$J/a PLAN_STEPS=100000 "$BIN" speed mobilenet_v2 224 128 tf32
one pytorch_bf16 CUDA_CACHE_PATH=$J/t $PY bench/gpu/train_torch.py mobilenet_v2 224 128 bf16 --fused
one pytorch_tf32 CUDA_CACHE_PATH=$J/t $PY bench/gpu/train_torch.py mobilenet_v2 224 128 tf32 --fused

if [ "${CURVES:-0}" = 1 ]; then
  PTH=dist/assets/mobilenet_v2-b0353104.pth
  export CUDA_CACHE_PATH=$J/a
  timeout 150 "$BIN" curve mobilenet_v2 64 32 50 0-11 fp32,tf32,bf16 >> "$OUT/curves_dw.jsonl" 2>> "$OUT/curves.err" || echo "curves mobilenet_v2 failed"
  timeout 150 "$BIN" curve mobilenet_v2 64 32 50 0-11 fp32,tf32,bf16 "$PTH" >> "$OUT/curves_dw.jsonl" 2>> "$OUT/curves.err" || echo "curves mobilenet_v2 ft failed"
  echo "curves done at $SECONDS s: $(wc -l < "$OUT/curves_dw.jsonl") lines"
fi
if [ "${PIPES:-1}" = 1 ] && [ -f dist/taoflow.xz ]; then
  TF=$(bash bench/gpu/unpack.sh)
  export TAOFLOW_ASSETS=$PWD/dist/assets; unset CUDA_CACHE_PATH
  for p in ${PIPELINES:-quickstart}; do
    extra=""; [ $p = quickstart ] && extra="--device cuda"
    s0=$SECONDS
    [ $p = mobilenet224-gpu ] && extra="--only train"
    timeout 200 "$TF" run pipelines/$p.toml $extra > "$OUT/$p.log" 2>&1
    echo "== $p: exit $? in $((SECONDS - s0)) s"
    for s in train retrain evaluate; do [ -f cache/logs/$p/$s.log ] && { echo "-- $s"; grep -E "ready in|epoch 1/|epoch [0-9]+/[0-9]+ .*val|top-1|depthwise" cache/logs/$p/$s.log | tail -4; }; done
    find pipelines/outputs/$p -name metrics.json | head -4 | while read f; do echo "$f: $(head -c 300 "$f")"; done
  done
  echo "kernel cache: $(ls cache/kernels-v1 2>/dev/null | tr '\n' ' ')"
fi
echo "done at $SECONDS s"
