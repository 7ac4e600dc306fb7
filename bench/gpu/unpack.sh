#!/usr/bin/env bash
# Unpack dist/NAME.xz (a stripped release binary built on the development machine; NAME
# defaults to taoflow) with Python's lzma (the GPU machine has no xz) and print its path.
# For taoflow, dist/taoflow-torch.xz (the GPU engine the `taoflow` launcher runs,
# src/runtime.rs) is unpacked beside it.
set -euo pipefail
NAME=${1:-taoflow}
DIR=${TMPDIR:-/tmp}/taoflow-dist
mkdir -p "$DIR"
unpack() {
  if [ ! -x "$DIR/$1" ] || [ "dist/$1.xz" -nt "$DIR/$1" ]; then
    python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' "dist/$1.xz" "$DIR/$1"
    chmod +x "$DIR/$1"
  fi
}
unpack "$NAME"
if [ "$NAME" = taoflow ] && [ -f dist/taoflow-torch.xz ]; then unpack taoflow-torch; fi
echo "$DIR/$NAME"
