#!/usr/bin/env bash
# A link-time stand-in for a CUDA libtorch, for building examples/burn_tch_bench.rs (Burn's
# own LibTorch backend, issue #8's measured-and-rejected candidate; docs/gpu.md): burn-tch
# compiles a panic for every CUDA device unless $LIBTORCH/lib has libtorch_cuda.so.
# Makes .libtorch-stub/ = .libtorch/ (scripts/libtorch.sh) + a two-symbol libtorch_cuda.so;
# the GPU machine's real one is loaded at run time through LD_LIBRARY_PATH.
#
#   bash scripts/libtorch-stub.sh
#   LIBTORCH=$PWD/.libtorch-stub cargo build --release --features burn-tch --example burn_tch_bench
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .libtorch/lib ] || bash scripts/libtorch.sh
rm -rf .libtorch-stub && mkdir -p .libtorch-stub/lib
ln -s ../.libtorch/include .libtorch-stub/include
cp .libtorch/build-version .libtorch-stub/ 2>/dev/null || true
for f in .libtorch/lib/*; do ln -s "../../$f" ".libtorch-stub/lib/$(basename "$f")"; done
cat > .libtorch-stub/stub.cpp <<'CPP'
struct cublasContext;
namespace at { namespace cuda {
cublasContext *getCurrentCUDABlasHandle() { return nullptr; }
int warp_size() { return 32; }
} }
CPP
g++ -shared -fPIC -O1 -Wl,-soname,libtorch_cuda.so -o .libtorch-stub/lib/libtorch_cuda.so .libtorch-stub/stub.cpp
echo "LIBTORCH=$PWD/.libtorch-stub"
