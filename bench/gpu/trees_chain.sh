#!/usr/bin/env bash
# Issue #20 on the GPU machine: the whole trees pipeline (pipelines/detect-trees.toml, seed
# SEED, ImageNet start) with --device cuda — train, evaluate, prune, retrain, evaluate,
# quantize, export — plus an FP32 export of the unpruned model and a uint8 quantization of
# the retrained one; then the ONNX files' onnxruntime CPU throughput (bench/detect_ort_speed.py:
# batch 8, 2 threads, 5 s each, in one process) beside each model's val AP50.
# carry ["dist/taoflow.xz", "pipelines/work"] (the pipeline's fetch/weights outputs).
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
BIN=$(bash bench/gpu/unpack.sh taoflow)
export TAOFLOW_GPUS=0 TAOFLOW_STORE=$OUT/store
SEED=${SEED:-0}
name=trees-chain-$SEED
p=pipelines/$name.toml
{ python3 bench/trees_pipeline.py --name $name --seed $SEED; cat <<'EOF'

[stages.export_unpruned]
kind = "export"
model = "train.model"

[stages.quantize_uint8]
kind = "quantize"
model = "retrain.model"
dataset = "convert"
calibration_batches = 4
batch_size = 8
activation_type = "uint8"
EOF
} > $p
"$BIN" run $p --device cuda > "$OUT/$name.log" 2>&1; echo "run exit $?"
grep -E "^ *(ran|failed)|error" "$OUT/$name.log" | head -30
d=pipelines/outputs/$name
for s in evaluate evaluate_retrained; do
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], "AP50", round(m["coco"]["AP50"],4), "AP", round(m["coco"]["AP"],4), "TAO mAP", round(m["tao"]["map"],4))' $d/$s/evaluation/metrics.json $s
done
for s in prune quantize quantize_uint8; do echo "== $s"; python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps(m)[:1500])' $(ls $d/$s/*/metrics.json 2>/dev/null | head -1) 2>&1 | head -3; done
$PY bench/detect_ort_speed.py $d/export_unpruned/onnx/model.onnx $d/export/onnx/model.onnx $d/quantize_uint8/int8/model.int8.onnx $d/quantize/int8/model.int8.onnx
nproc; lscpu | grep "Model name"
