#!/usr/bin/env bash
# Issue #20, the speed half of "prune → retrain ≥ 2× at ≤ 1 point AP50" and "INT8 ≥ 2×" at
# the trees pipeline's size (DetectNet_v2, ImageNet MobileNetV2 at 416²) on this machine's
# CPU: the trees pipeline's convert/train (1 epoch: throughput does not depend on training)
# → prune (target_flops 0.45, as committed) → FP32 exports and uint8 QDQ models of both,
# then onnxruntime CPU throughput of the four files in one process
# (bench/detect_ort_speed.py: batch 8, 2 threads, 5 s each). The AP50 half needs the trained
# models: bench/gpu/trees_chain.sh. Needs pipelines/work (run the pipeline's fetch and
# weights stages first: taoflow run pipelines/detect-trees.toml --only fetch --only weights).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/taoflow}
p=pipelines/trees-speed.toml
{
  python3 bench/trees_pipeline.py --name trees-speed --epochs 1 --drop augment evaluate retrain evaluate_retrained quantize export
  for x in unpruned:train.model pruned:prune.model; do
    printf '\n[stages.export_%s]\nkind = "export"\nmodel = "%s"\n' ${x%%:*} ${x#*:}
    printf '\n[stages.int8_%s]\nkind = "quantize"\nmodel = "%s"\ndataset = "convert"\ncalibration_batches = 2\nbatch_size = 8\nactivation_type = "uint8"\neval_split = "none"\n' ${x%%:*} ${x#*:}
  done
} > $p
"$BIN" run $p
d=pipelines/outputs/trees-speed
python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({k: m[k] for k in m if not isinstance(m[k], (list, dict))}))' $d/prune/model/metrics.json
python3 bench/detect_ort_speed.py $d/export_unpruned/onnx/model.onnx $d/export_pruned/onnx/model.onnx $d/int8_unpruned/int8/model.int8.onnx $d/int8_pruned/int8/model.int8.onnx
