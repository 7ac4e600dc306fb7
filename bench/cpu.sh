#!/usr/bin/env bash
# Issue #29: taoflow's CPU engines against PyTorch on the CPU (pip wheel), same threads, in
# one run — MobileNetV2 at 32² and 224², ResNet-18 at 224²: inference img/s at batch 1 and 64
# (taoflow: its CPU inference engine, onnxruntime where it loads, and the Burn forward pass)
# and training img/s at batch 32 (SGD + Nesterov, synthetic images, 10 classes).
#   bash bench/cpu.sh [SECONDS]      # PyTorch: PYTHON=... or a venv made in bench/.venv-torch
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-3}
PY=${PYTHON:-bench/.venv-torch/bin/python}
if [ ! -x "$PY" ]; then
  python3 -m venv bench/.venv-torch
  bench/.venv-torch/bin/pip install -q --disable-pip-version-check 'torch==2.15.0' 'torchvision==0.29.2'
fi
[ -x target/release/examples/cpu_bench ] && [ -z "${REBUILD:-}" ] || cargo build --release --locked --example cpu_bench
OUT=${OUT:-bench/outputs}; mkdir -p "$OUT"
: > "$OUT/cpu.jsonl"
echo "# $(nproc) cores: $(lscpu | sed -n 's/^Model name: *//p')"
for cfg in "mobilenet_v2 32" "mobilenet_v2 224" "resnet18 224"; do
  # shellcheck disable=SC2086
  target/release/examples/cpu_bench $cfg "$SECS" | tee -a "$OUT/cpu.jsonl"
  # shellcheck disable=SC2086
  "$PY" bench/cpu_peer.py $cfg "$SECS" | tee -a "$OUT/cpu.jsonl"
done
python3 - "$OUT/cpu.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peer = {(r["arch"], r["size"], r["mode"], r["batch"]): r["img_s"] for r in rows if r["who"] == "pytorch"}
print(f"\n| model | mode | batch | engine | img/s | PyTorch img/s | ratio |\n|---|---|---|---|---|---|---|")
for r in rows:
    if r["who"] != "taoflow":
        continue
    p = peer.get((r["arch"], r["size"], r["mode"], r["batch"]))
    print(f"| {r['arch']} {r['size']}² | {r['mode']} | {r['batch']} | {r['engine']} | {r['img_s']:,.1f} | {p:,.1f} | {r['img_s'] / p:.2f}× |" if p else f"| {r['arch']} {r['size']}² | {r['mode']} | {r['batch']} | {r['engine']} | {r['img_s']:,.1f} | – | – |")
PY
