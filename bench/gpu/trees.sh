#!/usr/bin/env bash
# Issue #20 on the GPU machine: the trees pipeline (pipelines/detect-trees.toml) fine-tuned
# from ImageNet vs from scratch, and torchvision's Faster R-CNN with the same ImageNet
# MobileNetV2 on the same tiles for the same epochs (bench/trees_frcnn.py, scored by
# `taoflow eval-detections`, which equals pycocotools), seeds 0-2. The machine has no
# network: run the pipeline's `fetch` and `weights` stages here first and carry their files:
# carry ["dist/taoflow.xz", "pipelines/work"]; the pipeline is rewritten to read them.
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
BIN=$(bash bench/gpu/unpack.sh taoflow)
export TAOFLOW_GPUS=0 TAOFLOW_STORE=$OUT/store
EPOCHS=$(sed -n 's/^epochs = //p' pipelines/detect-trees.toml | head -1)
for seed in ${SEEDS:-0 1 2}; do
  for variant in imagenet scratch; do
    name=trees-$variant-$seed
    p=pipelines/$name.toml
    python3 bench/trees_pipeline.py --name $name --seed $seed $([ $variant = scratch ] && echo --scratch) > $p
    "$BIN" run $p --device cuda --only convert --only augment --only train --only evaluate > "$OUT/$name.log" 2>&1
    python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], "AP50", round(m["coco"]["AP50"],4), "AP", round(m["coco"]["AP"],4), "TAO mAP", m["tao"]["map"], "img/s", round(m["inference"]["images_per_second"]))' pipelines/outputs/$name/evaluate/evaluation/metrics.json $name || tail -5 "$OUT/$name.log"
    grep -h "ran train" -A1 "$OUT/$name.log" | tail -1
  done
  d=pipelines/outputs/trees-imagenet-$seed
  $PY bench/trees_frcnn.py $d/augment/dataset $d/convert/dataset pipelines/work/weights/mobilenet_v2-b0353104.pth $EPOCHS --seed $seed --out $OUT/frcnn-$seed 2>/dev/null | tail -1
  "$BIN" eval-detections $OUT/frcnn-$seed/gt.json $OUT/frcnn-$seed/dets.json --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print("frcnn-'$seed'", "AP50", round(r["coco"]["AP50"],4), "AP", round(r["coco"]["AP"],4))'
done
