#!/usr/bin/env bash
# Run on the GPU machine (through the device tool), from the repository root, with the
# release binary carried as dist/taoflow.xz (see bench/gpu/README.md):
#   1. our fused NVRTC kernel vs the CPU reference on a 256x3x384x1248 batch (parity, timings)
#   2. torchvision.transforms.v2 on the GPU on the same batch shape (one parameter set, and
#      per-image parameters)
#   3. the kitti-augment pipeline end to end with gpus = 1 and with gpus = 0: the two
#      datasets must agree to within rounding.
# Writes logs to $OUT (or /tmp/taoflow-gpu) and prints a short table last.
set -uo pipefail
OUT=${OUT:-/tmp/taoflow-gpu}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} CUDA_PATH=/usr/local/cuda
export TAOFLOW_GPUS=${TAOFLOW_GPUS:-0}
BIN=$(bash bench/gpu/unpack.sh) || exit 1
PY=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1

"$BIN" bench-augment --batch 256 --width 1248 --height 384 --iters 20 > "$OUT/ours.json" 2> "$OUT/ours.err"
echo "ours rc=$?" >> "$OUT/ours.err"
"$PY" bench/gpu/augment_torchvision.py 256 384 1248 > "$OUT/torchvision.json" 2> "$OUT/torchvision.err"

# End to end: the same stage on the GPU and on the CPU.
W=$(mktemp -d)
cp pipelines/kitti-augment.toml "$W/gpu.toml"
sed -e 's/^name = "kitti-augment"/name = "kitti-augment-cpu"/' pipelines/kitti-augment.toml > "$W/cpu.toml"
python3 - "$W" <<'PY'
import sys, re
w = sys.argv[1]
for name, gpus in (("gpu", 1), ("cpu", 0)):
    p = f"{w}/{name}.toml"
    s = open(p).read().replace('dataset = "convert"\n', f'dataset = "convert"\ngpus = {gpus}\n', 1)
    s = s.replace("params = { count = 60 }", "params = { count = 400 }")
    open(p, "w").write(s)
PY
# Separate stores: the device is not part of the stage key, so a shared store would serve
# the CPU run from the GPU run's cache.
( cd "$W" && TAOFLOW_STORE="$W/store-gpu" "$BIN" run gpu.toml --json > "$OUT/e2e-gpu.jsonl" 2> "$OUT/e2e-gpu.err"; \
  TAOFLOW_STORE="$W/store-cpu" "$BIN" run cpu.toml --json > "$OUT/e2e-cpu.jsonl" 2> "$OUT/e2e-cpu.err" )
python3 - "$W" "$OUT" <<'PY'
import sys, json, tarfile, glob, io, os
w, out = sys.argv[1], sys.argv[2]
def load(d):
    r = {}
    for t in sorted(glob.glob(f"{d}/*.tar")):
        with tarfile.open(t) as tf:
            for m in tf:
                r[m.name] = tf.extractfile(m).read()
    return r
g = load(f"{w}/outputs/kitti-augment/augment/dataset")
c = load(f"{w}/outputs/kitti-augment-cpu/augment/dataset")
res = {"members_gpu": len(g), "members_cpu": len(c), "same_names": sorted(g) == sorted(c)}
try:
    from PIL import Image
    import numpy as np
    tot = diff = over = 0; mx = 0
    for k in g:
        if k.endswith(".png") and not k.endswith("mask.png") and k in c:
            a = np.asarray(Image.open(io.BytesIO(g[k])), dtype=np.int16); b = np.asarray(Image.open(io.BytesIO(c[k])), dtype=np.int16)
            d = np.abs(a - b); tot += d.size; diff += int((d > 0).sum()); over += int((d > 1).sum()); mx = max(mx, int(d.max()))
        elif k in c and g[k] != c[k]:
            res.setdefault("labels_differ", []).append(k)
    res.update({"pixel_bytes": tot, "differing": diff, "fraction": diff / max(tot, 1), "differing_by_more_than_1": over, "max_abs_diff": mx})
except Exception as e:
    res["compare_error"] = repr(e)
json.dump(res, open(f"{out}/e2e-compare.json", "w"), indent=1)
PY
grep -h '"stage":"augment"' "$OUT"/e2e-*.jsonl > "$OUT/e2e-augment-stages.jsonl" 2>/dev/null

echo "== results"
cat "$OUT/gpu.txt"
cat "$OUT/ours.json"
cat "$OUT/torchvision.json"
cat "$OUT/e2e-compare.json"
cat "$OUT/e2e-augment-stages.jsonl"
tail -3 "$OUT/ours.err" "$OUT/torchvision.err" "$OUT/e2e-gpu.err" 2>/dev/null
