#!/usr/bin/env bash
# Engine benchmark (see bench/engine.py). Needs ~2x SIZE_MB of free disk; DVC is
# installed with pip if missing. Usage: bench/engine.sh [SIZE_MB]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin taoflow
command -v dvc >/dev/null || python3 -m pip install -q dvc
python3 bench/engine.py "$@"
