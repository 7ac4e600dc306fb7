#!/usr/bin/env bash
# ONNX models exported by taoflow, in onnxruntime on the GPU machine: which execution
# providers it offers, and side-by-side throughput (and top-1 on the quickstart's test
# images where the model was trained on them) per provider:
#   - the quickstart's FP32 export vs its INT8 QDQ model          (issue #7)
#   - the unpruned vs the pruned+retrained quickstart-prune model (issue #6)
#   - MobileNetV2 at 224x224: FP32 vs FP16 vs INT8 (random calibration: speed only)
# The models travel in dist/onnx/ (made on the development machine, see BENCHMARKS.md).
# Prints a table per pair; logs and JSON go to $OUT (or ./bench/outputs).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-bench/outputs}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# onnxruntime-gpu finds cuDNN/cuBLAS of the PyTorch wheels there.
for d in "$($PY -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)"/nvidia/*/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:$LD_LIBRARY_PATH"
done
$PY -c 'import onnxruntime as o; print("onnxruntime", o.__version__, "device", o.get_device(), "providers", o.get_available_providers())' | tee "$OUT/providers.txt"
D=dist/onnx
S=${SECONDS_PER_MODEL:-4}
run() { # label-pair A B batch extra...
  local labels=$1 a=$2 b=$3 batch=$4; shift 4
  echo "== $labels (batch $batch)"
  $PY bench/onnx_int8.py "$a" "$b" --labels "$labels" --batch "$batch" --seconds "$S" --json "$OUT/$(basename "$a" .onnx)-vs-$(basename "$b" .onnx)-b$batch.json" "$@" 2>>"$OUT/ort-warnings.log" | tail -n +2
}
run fp32,int8 $D/quickstart.onnx $D/quickstart.int8.onnx 256
run unpruned,pruned $D/quickstart.onnx $D/pruned.onnx 256
run pruned-fp32,pruned-int8 $D/pruned.onnx $D/pruned.int8.onnx 256
run fp32,fp16 $D/mobilenet_v2-224.onnx $D/mobilenet_v2-224.fp16.onnx 128 --data /nonexistent
run fp32,int8 $D/mobilenet_v2-224.onnx $D/mobilenet_v2-224.int8.onnx 128 --data /nonexistent
# Parity on the GPU: CUDA FP32 and FP16 against CPU FP32 on the same random batch.
$PY - "$D/mobilenet_v2-224.onnx" "$D/mobilenet_v2-224.fp16.onnx" <<'PY' | tee "$OUT/parity.txt"
import sys, numpy as np, onnxruntime as ort
fp32, fp16 = sys.argv[1:3]
x = np.random.default_rng(0).standard_normal((8, 3, 224, 224), np.float32)
ref = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
rel = lambda a: float(np.abs(a - ref).max() / np.abs(ref).max())
if "CUDAExecutionProvider" in ort.get_available_providers():
    for tag, m in (("fp32", fp32), ("fp16", fp16)):
        s = ort.InferenceSession(m, providers=["CUDAExecutionProvider"])
        print(f"CUDA {tag} vs CPU fp32: max rel diff {rel(s.run(None, {'input': x})[0]):.2e} (providers used: {s.get_providers()})")
else:
    print("no CUDAExecutionProvider")
PY
