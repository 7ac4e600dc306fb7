#!/usr/bin/env bash
# The quickstart (fine-tuned ImageNet MobileNetV2) against the same network trained from
# scratch on the same data, epochs and input size. Prints both accuracies and wall times.
# Usage: bash bench/quickstart.sh   (release build; about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/taoflow
for p in pipelines/quickstart.toml bench/quickstart-scratch.toml; do
  start=$(date +%s.%N)
  "$BIN" run "$p" --force=train --force=evaluate >/dev/null 2>&1 || "$BIN" run "$p"
  end=$(date +%s.%N)
  name=$(basename "$p" .toml)
  out=$(grep -o 'outputs/[^"]*' /dev/null || true)
  python3 - "$p" "$name" "$start" "$end" <<'PY'
import json, sys, tomllib, os
p, name, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
cfg = tomllib.load(open(p, "rb"))
pipe = cfg["pipeline"]["name"]
d = os.path.dirname(p)
t = json.load(open(os.path.join(d, "outputs", pipe, "train", "model", "metrics.json")))
e = json.load(open(os.path.join(d, "outputs", pipe, "evaluate", "evaluation", "metrics.json")))
secs = sum(r["seconds"] for r in t["history"])
print(f"{name:20s} top-1 {e['accuracy']:.4f}  macro-F1 {e['macro_avg']['f1']:.4f}  train {secs:.0f}s  run {end-start:.0f}s  ({t['history'][-1]['images_per_second']:.0f} img/s)")
PY
done
