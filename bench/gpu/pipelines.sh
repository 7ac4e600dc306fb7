#!/usr/bin/env bash
# Issue #8 on the H200: the quickstart (`--device cuda`) and the 224x224 MobileNetV2
# fine-tune (pipelines/mobilenet224-gpu.toml, gpus = 1, bf16) end to end with the taoflow
# binary built with `--features torch` (dist/taoflow.xz). Offline: the MobileNetV2 weights
# come from dist/assets (TAOFLOW_ASSETS). Copies each run's metrics to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
export TAOFLOW_ASSETS=${TAOFLOW_ASSETS:-$PWD/dist/assets}
BIN=$(bash bench/gpu/unpack.sh)
for p in quickstart mobilenet224-gpu; do
  extra=""
  [ $p = quickstart ] && extra="--device cuda"
  start=$(date +%s.%N)
  $BIN run pipelines/$p.toml $extra > "$OUT/$p.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "== $p: exit $rc, $(python3 -c "print(round($end-$start,1))") s"
  tail -12 "$OUT/$p.log"
  mkdir -p "$OUT/$p"
  for f in $(find pipelines/outputs/$p -name metrics.json -o -name history.csv 2>/dev/null); do
    cp "$f" "$OUT/$p/$(echo "$f" | tr / _)"
  done
  cp cache/logs/$p/train.log "$OUT/$p/train.log" 2>/dev/null && tail -8 "$OUT/$p/train.log"
done
# the second run of each is served from the store
$BIN run pipelines/mobilenet224-gpu.toml 2>&1 | tail -2
