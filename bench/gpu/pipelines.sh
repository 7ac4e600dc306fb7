#!/usr/bin/env bash
# Issues #6/#7/#8 on the H200: pipelines end to end with the taoflow binary built with
# `--features torch` (dist/taoflow.xz): the quickstart (`--device cuda`) and TAO's whole
# loop at 224x224 (pipelines/mobilenet224-gpu.toml: fine-tune, prune, retrain, evaluate,
# quantize, export). Then the 224x224 models themselves: GPU inference of the fine-tuned vs
# the pruned model (PyTorch on our artifacts, bench/gpu/torch_graph.py, which also checks our
# ONNX exports against PyTorch), and onnxruntime on the machine's CPU: FP32 vs pruned, FP32
# vs INT8 (bench/onnx_int8.py, top-1 on the test images too).
# Offline: the MobileNetV2 weights come from dist/assets (TAOFLOW_ASSETS).
#
#   bash bench/gpu/pipelines.sh [PIPELINE...]     # default: quickstart mobilenet224-gpu
#   RUN_ARGS="--only train ..." bash bench/gpu/pipelines.sh mobilenet224-gpu   # some stages
#
# Copies each run's metrics and logs to $OUT; $OUT/onnx224_{a,b}.tar.xz hold the 224x224 ONNX
# models, to be measured on other machines (in $ART instead, when set).
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
export TAOFLOW_ASSETS=${TAOFLOW_ASSETS:-$PWD/dist/assets}
BIN=$(bash bench/gpu/unpack.sh)
PIPES=${*:-quickstart mobilenet224-gpu}
for p in $PIPES; do
  extra=""
  [ $p = quickstart ] && extra="--device cuda"
  start=$(date +%s.%N)
  timeout ${PIPE_TIMEOUT:-3000} $BIN run pipelines/$p.toml $extra ${RUN_ARGS:-} > "$OUT/$p.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "== $p: exit $rc, $(python3 -c "print(round($end-$start,1))") s"
  tail -25 "$OUT/$p.log"
  mkdir -p "$OUT/$p"
  for f in $(find pipelines/outputs/$p -name metrics.json -o -name history.csv 2>/dev/null); do
    cp "$f" "$OUT/$p/$(echo "${f#pipelines/outputs/$p/}" | tr / _)"
  done
  for s in train retrain; do
    [ -f cache/logs/$p/$s.log ] && { cp cache/logs/$p/$s.log "$OUT/$p/$s.log"; echo "-- $s"; tail -6 cache/logs/$p/$s.log; }
  done
done
M=pipelines/outputs/mobilenet224-gpu
if [ -d $M/retrain/model ]; then
  echo "== top-1 of the 224x224 models in fp32, TF32 and bf16 (PyTorch on our artifacts)"
  timeout 200 $PY bench/gpu/precision_check.py $M/train/model $M/retrain/model
  echo "== GPU inference at 224x224: fine-tuned vs pruned+retrained (PyTorch on our artifacts)"
  timeout 200 $PY bench/gpu/torch_graph.py $M/train/model $M/retrain/model --onnx $M/export/onnx/model.onnx $M/export_retrained/onnx/model.onnx \
    --sizes 224 --batch 256 --json "$OUT/torch_graph224.json"
  echo "== onnxruntime on this machine's CPU, 224x224, batch 128"
  for pair in "export/onnx/model.onnx export_retrained/onnx/model.onnx unpruned,pruned" \
              "export/onnx/model.onnx quantize/int8/model.int8.onnx fp32,int8"; do
    set -- $pair
    [ -f $M/$2 ] || continue
    timeout 120 $PY bench/onnx_int8.py $M/$1 $M/$2 --labels $3 --batch 128 --seconds 5 --json "$OUT/ort_$3.json"
  done
  [ -f $M/quantize/int8/model.int8.onnx ] || exit 0
  mkdir -p /tmp/onnx224
  cp $M/export/onnx/model.onnx /tmp/onnx224/fp32.onnx; cp $M/quantize/int8/model.int8.onnx /tmp/onnx224/int8.onnx
  cp $M/export_retrained/onnx/model.onnx /tmp/onnx224/pruned.onnx
  # two archives: each file that comes back from the machine is at most 16 MiB
  tar -C /tmp -cJf "${ART:-$OUT}/onnx224_a.tar.xz" onnx224/fp32.onnx onnx224/int8.onnx
  tar -C /tmp -cJf "${ART:-$OUT}/onnx224_b.tar.xz" onnx224/pruned.onnx
fi
# a second run is served from the store
[ -z "${RUN_ARGS:-}" ] && for p in $PIPES; do $BIN run pipelines/$p.toml 2>&1 | tail -1; done
exit 0
