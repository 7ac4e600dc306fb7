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
python3 - > $p <<'PY'
import re
t = open("pipelines/detect-trees.toml").read()
t = re.sub(r"\n\[stages\.(fetch|weights)\]\n(?:(?!\n\[).)*", "\n", t, flags=re.S)
t = re.sub(r"\n\[stages\.augment\]\n(?:(?!\n\[stages\.train\]).)*", "\n", t, flags=re.S)
t = t.replace('source = "fetch.images"', 'source = "work/deepforest"')
t = t.replace('pretrained = "weights"', 'pretrained = "work/weights/mobilenet_v2-b0353104.pth"')
t = t.replace('name = "detect-trees"', 'name = "trees-speed"')
t = t.replace('dataset = "augment"\narch', 'dataset = "convert"\narch').replace("epochs = 20", "epochs = 1")
t = t[:t.index("[stages.evaluate]")] + t[t.index("[stages.prune]"):t.index("[stages.retrain]")]
for name, model in (("unpruned", "train.model"), ("pruned", "prune.model")):
    t += f'''
[stages.export_{name}]
kind = "export"
model = "{model}"

[stages.int8_{name}]
kind = "quantize"
model = "{model}"
dataset = "convert"
calibration_batches = 2
batch_size = 8
activation_type = "uint8"
eval_split = "none"
'''
print(t)
PY
"$BIN" run $p
d=pipelines/outputs/trees-speed
python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({k: m[k] for k in m if not isinstance(m[k], (list, dict))}))' $d/prune/model/metrics.json
python3 bench/detect_ort_speed.py $d/export_unpruned/onnx/model.onnx $d/export_pruned/onnx/model.onnx $d/int8_unpruned/int8/model.int8.onnx $d/int8_pruned/int8/model.int8.onnx
