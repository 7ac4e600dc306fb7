# Sourced by the GPU benchmarks that run taoflow built with `--features torch`: PY (the GPU
# machine's PyTorch venv), OUT (created), and LD_LIBRARY_PATH with that PyTorch's torch/lib,
# from which the binary loads libtorch (CUDA half included) at run time.
PY=${PYTHON:-/opt/torch/.venv/bin/python}
OUT=${OUT:-bench/outputs}
mkdir -p "$OUT"
TORCH_LIB=$($PY -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
