#!/usr/bin/env bash
# Set-up for training on NVIDIA GPUs (README "On a GPU"): the GPU runtime, then taoflow with
# the GPU engine.
#
# 1. The runtime: PyTorch's torch wheel from PyPI with the NVIDIA wheels it pins (cuDNN,
#    cuBLAS, NCCL, NVRTC, the CUDA runtime …; ~4.5 GB) installed into one folder with
#    `pip install --target`, where taoflow finds it on its own (src/runtime.rs):
#    $TAOFLOW_RUNTIME, else ${XDG_DATA_HOME:-~/.local/share}/taoflow/torch-<version>.
#    No PyTorch needs to be installed, and whatever PyTorch is installed is left alone.
# 2. The build: `cargo build --release --features torch` against that runtime's headers and
#    libraries (target/release/taoflow + taoflow-torch), or with `--install`,
#    `cargo install --path . --features torch` (~/.cargo/bin/taoflow + taoflow-torch).
#
# Needs python3 with pip and a Rust toolchain; no CUDA toolkit, no GPU (it can run on a
# build machine: copy the runtime folder and the two programs to the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.11.0
DEST=${TAOFLOW_RUNTIME:-${XDG_DATA_HOME:-$HOME/.local/share}/taoflow/torch-$VERSION}
if [ -f "$DEST/torch/version.py" ] && grep -q "^__version__ = '$VERSION" "$DEST/torch/version.py" && [ -f "$DEST/torch/lib/libtorch_cuda.so" ]; then
  echo "GPU runtime: $DEST (already there)"
else
  echo "GPU runtime: installing PyTorch $VERSION with its NVIDIA libraries into $DEST (~4.5 GB)"
  rm -rf "$DEST.tmp"
  mkdir -p "$(dirname "$DEST")"
  # Into a temporary folder first: an interrupted download never leaves a half runtime
  # where taoflow would find it.
  python3 -m pip install --quiet --no-compile --disable-pip-version-check --target "$DEST.tmp" "torch==$VERSION"
  rm -rf "$DEST"
  mv "$DEST.tmp" "$DEST"
fi
# Build against the runtime's own headers and libraries (torch-sys reads LIBTORCH; tch 0.22's
# check for torch 2.9 is relaxed by .cargo/config.toml, docs/gpu.md).
export LIBTORCH="$DEST/torch"
if [ "${1:-}" = "--install" ]; then
  cargo install --locked --path . --features torch
  BIN=taoflow
else
  cargo build --release --locked --features torch
  BIN=target/release/taoflow
fi
"$BIN" doctor
echo
echo "done: $BIN run pipelines/quickstart.toml --device cuda"
