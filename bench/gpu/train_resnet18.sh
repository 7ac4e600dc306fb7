#!/usr/bin/env bash
# Issues #4/#8 on the H200: our GPU training engine (libtorch through tch, examples/train_bench.rs)
# against PyTorch (torchvision, bench/gpu/train_torch.py) in one call: time to the first
# finished training step (process start to step done; the first run on the machine is the
# "fresh" one, the second "warm"), steady-state training and inference img/s at batch 128 /
# 256, 224x224, for ResNet-18 and MobileNetV2 in tf32 and bf16 (and fp32 for ResNet-18),
# peak GPU memory (nvidia-smi, sampled every 100 ms, for both), and the loss over 50 steps
# of Burn on the CPU vs our engine on the GPU. Prints a table; logs and JSON go to $OUT.
#
# Knobs: PEERS="foreach fused" (PyTorch's Adam variants to run), FP32=1 (the fp32 rows),
# CURVES=1 (the loss curves of seed 0, ~4 min; bench/gpu/curves.sh runs many seeds). With dist/burn_tch_bench.xz present, Burn's own
# LibTorch backend (examples/burn_tch_bench.rs, the rejected candidate) gets fp32/tf32 rows.
#
# Carry: dist/train_bench.xz (stripped example, xz). Needs PyTorch's libs at run time:
# LD_LIBRARY_PATH=<site-packages>/torch/lib (bench/gpu/torch_env.sh sets it).
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/torch_env.sh
BIN=$(bash bench/gpu/unpack.sh train_bench)
RES="$OUT/train_bench.jsonl"
: > "$RES"

# peak GPU memory of one command (MiB, whole process incl. context), appended to its JSON line
run() {
  local log="$OUT/run-$(date +%s%N).log"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log.mem" 2>/dev/null &
  local smi=$!
  "$@" > "$log" 2> "$log.err"
  local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  local peak=$(sort -n "$log.mem" | tail -1)
  if [ $rc -ne 0 ]; then echo "FAILED ($rc): $*"; tail -5 "$log.err"; return; fi
  python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); d["smi_peak_mib"]=int(sys.argv[2] or 0); print(json.dumps(d))' "$log" "${peak:-0}" >> "$RES"
}

PEERS=${PEERS:-foreach fused}
peer() {  # arch prec
  for k in $PEERS; do
    if [ $k = fused ]; then run $PY bench/gpu/train_torch.py $1 224 128 $2 --fused; else run $PY bench/gpu/train_torch.py $1 224 128 $2; fi
  done
}
# first steps: fresh (first process on this machine) and warm
run "$BIN" speed resnet18 224 128 tf32
run "$BIN" speed resnet18 224 128 tf32
for arch in resnet18 mobilenet_v2; do
  for p in tf32 bf16; do
    run "$BIN" speed $arch 224 128 $p
    peer $arch $p
  done
done
if [ "${FP32:-1}" = 1 ]; then
  run "$BIN" speed resnet18 224 128 fp32
  peer resnet18 fp32
fi
if [ -f dist/burn_tch_bench.xz ]; then
  BT=$(bash bench/gpu/unpack.sh burn_tch_bench)
  for arch in resnet18 mobilenet_v2; do
    for p in tf32 fp32; do run timeout 300 "$BT" $arch 224 128 $p; done
  done
fi
if [ "${CURVES:-1}" = 1 ]; then
  # loss curves: Burn (CPU) vs libtorch (GPU), same weights and batches, 50 SGD steps
  "$BIN" curve resnet18 64 32 50 0 burn,torch_cpu,fp32,tf32,bf16 > "$OUT/curve_resnet18.jsonl" 2> "$OUT/curve_resnet18.err" || echo "curve resnet18 FAILED"
  "$BIN" curve mobilenet_v2 64 32 50 0 burn,torch_cpu,fp32,tf32,bf16 > "$OUT/curve_mobilenet_v2.jsonl" 2> "$OUT/curve_mobilenet_v2.err" || echo "curve mobilenet_v2 FAILED"
fi
if [ "${CURVES_FT:-1}" = 1 ] && [ -f dist/assets/mobilenet_v2-b0353104.pth ]; then
  # the same from torchvision's ImageNet weights (fine-tuning, what taoflow's loop does)
  "$BIN" curve mobilenet_v2 64 32 50 0 burn,torch_cpu,fp32,tf32,bf16 dist/assets/mobilenet_v2-b0353104.pth > "$OUT/curve_mobilenet_v2_ft.jsonl" 2> "$OUT/curve_mobilenet_v2_ft.err" || echo "curve mobilenet_v2 ft FAILED"
fi

$PY - "$RES" "$OUT" <<'PY'
import json, sys, glob, os
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'impl':14} {'arch':13} {'prec':5} {'to 1st step s':>13} {'train img/s':>11} {'infer img/s':>11} {'peak MiB':>8}  infer rounds")
for r in rows:
    rounds = " ".join(f"{v:.0f}" for v in r.get("infer_rounds", []))
    extra = f"  cache diff {r['infer_cache_max_abs_diff']:.1e}" if "infer_cache_max_abs_diff" in r else ""
    print(f"{r['impl']:14} {r['arch']:13} {r['precision']:5} {r['process_to_first_step_s']:13.2f} {r['train_img_s']:11.0f} {r['infer_img_s']:11.0f} {r.get('smi_peak_mib',0):8}  {rounds}{extra}")
print("\nratios taoflow / pytorch (default foreach Adam) and / pytorch fused Adam:")
def pick(impl, arch, p):
    c = [r for r in rows if r["impl"] == impl and r["arch"] == arch and r["precision"] == p]
    return c[-1] if c else None
for arch in ("resnet18", "mobilenet_v2"):
    for p in ("fp32", "tf32", "bf16"):
        o, t, f, b = pick("taoflow", arch, p), pick("pytorch", arch, p), pick("pytorch-fused", arch, p), pick("burn-tch", arch, p)
        ref = t or f
        if o and ref:
            s = f"{arch:13} {p:5} train {o['train_img_s']/ref['train_img_s']:.2f}x  infer {o['infer_img_s']/ref['infer_img_s']:.2f}x ({'foreach' if t else 'fused'})"
            if t and f:
                s += f"  | vs fused: train {o['train_img_s']/f['train_img_s']:.2f}x infer {o['infer_img_s']/f['infer_img_s']:.2f}x"
            print(s)
        if b and ref:
            print(f"{arch:13} {p:5} burn-tch / pytorch: train {b['train_img_s']/ref['train_img_s']:.2f}x  infer {b['infer_img_s']/ref['infer_img_s']:.2f}x  first step {b['process_to_first_step_s']:.1f} s")
curves = sorted(glob.glob(os.path.join(sys.argv[2], "curve_*.jsonl")))
if curves:
    import subprocess
    print("\nloss after 50 steps vs Burn on the CPU (seed 0; bench/gpu/curves.sh for many seeds):")
    subprocess.run([sys.executable, "bench/gpu/curve_stats.py", *curves])
PY
