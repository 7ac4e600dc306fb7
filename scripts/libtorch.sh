#!/usr/bin/env bash
# Fetches libtorch for the `torch` feature (the GPU training path) from PyPI's torch wheel and
# unpacks the CPU libraries and headers into .libtorch/ (git-ignored). The build links only
# libtorch_cpu/libc10; at run time `--device cuda` loads the CUDA half (libtorch_cuda.so)
# from the PyTorch installation on the machine (LD_LIBRARY_PATH or TAOFLOW_LIBTORCH).
# tch 0.22 (the one Burn 0.21 locks) is generated for torch 2.9; it builds against 2.11 (LIBTORCH_BYPASS_VERSION_CHECK=1), the version PyTorch installations have now.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.11.0
DEST=.libtorch
if [ -f "$DEST/VERSION" ] && [ "$(cat "$DEST/VERSION")" = "$VERSION" ] && [ -f "$DEST/lib/libcupti.so.13" ]; then
  echo "libtorch $VERSION already in $DEST"; exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps "torch==$VERSION" --python-version 3.11 --platform manylinux_2_28_x86_64 --only-binary=:all: -d "$TMP"
# libtorch_cpu.so of the CUDA build also needs libcudart and libcupti to load (no GPU needed).
python3 -m pip download --quiet --no-deps "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85" -d "$TMP"
WHEEL=$(ls "$TMP"/torch-*.whl)
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp/lib"
python3 - "$WHEEL" "$DEST.tmp" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
keep = {"libc10.so", "libtorch.so", "libtorch_cpu.so", "libgomp.so.1", "libtorch_global_deps.so"}
with zipfile.ZipFile(wheel) as z:
    for n in z.namelist():
        if n.startswith("torch/include/") and not n.endswith("/"):
            z.extract(n, dest)
        elif n.startswith("torch/lib/") and os.path.basename(n) in keep:
            with z.open(n) as src, open(os.path.join(dest, "lib", os.path.basename(n)), "wb") as out:
                out.write(src.read())
os.rename(os.path.join(dest, "torch", "include"), os.path.join(dest, "include"))
os.rmdir(os.path.join(dest, "torch"))
PY
python3 - "$DEST.tmp/lib" "$TMP"/nvidia_cuda_*.whl <<'PY'
import sys, zipfile, os
dest = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for n in z.namelist():
            if os.path.basename(n) in ("libcudart.so.13", "libcupti.so.13"):
                with z.open(n) as src, open(os.path.join(dest, os.path.basename(n)), "wb") as out:
                    out.write(src.read())
PY
echo "$VERSION+cu130" > "$DEST.tmp/build-version"
echo "$VERSION" > "$DEST.tmp/VERSION"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "libtorch $VERSION (CPU part) in $DEST; build with:"
echo "  cargo build --release --features torch   (.cargo/config.toml points LIBTORCH here)"
echo "run the tests with LD_LIBRARY_PATH=$PWD/$DEST/lib"
