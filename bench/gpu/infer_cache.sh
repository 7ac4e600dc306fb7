#!/usr/bin/env bash
# #8: inference with the engine's cache (bf16 kernel copies, fused depthwise layers' batch
# norms folded once per weight change) against folding at every call, MobileNetV2 224² on
# warm kernels, at inference batches 256, 8 and 1 (INFER_BATCHES), bf16 and tf32, next to
# PyTorch's eager inference at the same batch. JSON lines to $OUT/infer_cache.jsonl; a
# table at the end. Carry: dist/train_bench.xz.
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
BIN=$(bash bench/gpu/unpack.sh train_bench)
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-${TMPDIR:-/tmp}/jit-infer}
RES="$OUT/infer_cache.jsonl"
one() {  # label, command...
  local label=$1; shift
  local line
  line=$(timeout 120 "$@" 2>> "$OUT/infer_cache.err" | tail -1)
  [ -z "$line" ] && { echo "FAILED: $label"; return; }
  python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; print(json.dumps(d))' "$label" "$line" >> "$RES"
}
for ib in ${INFER_BATCHES:-256 8 1}; do
  for p in bf16 tf32; do
    INFER_BATCH=$ib one "ours_${p}_$ib" "$BIN" speed mobilenet_v2 224 128 $p
    INFER_BATCH=$ib one "pytorch_${p}_$ib" $PY bench/gpu/train_torch.py mobilenet_v2 224 128 $p --fused
  done
done
python3 - "$RES" <<'PY'
import json, sys
# Each of our runs is paired with the PyTorch run that follows it (same precision and batch):
# at small batches both are bound by the host's dispatch, and that varies from process to
# process and machine to machine, so only neighbours compare.
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'precision':9} {'batch':>5} {'ours cached':>12} {'uncached':>9} {'pytorch':>9} {'ours/pytorch':>12} {'cache gain':>10}")
for i, r in enumerate(rows):
    if r["impl"] != "taoflow":
        continue
    p = next((q["infer_img_s"] for q in rows[i + 1:] if q["impl"].startswith("pytorch") and q["precision"] == r["precision"] and q["infer_batch"] == r["infer_batch"]), None)
    print(f"{r['precision']:9} {r['infer_batch']:5} {r['infer_img_s']:12.0f} {r['infer_uncached_img_s']:9.0f} {p or float('nan'):9.0f} {r['infer_img_s'] / p if p else float('nan'):12.3f} {r['infer_img_s'] / r['infer_uncached_img_s']:10.3f}")
PY
