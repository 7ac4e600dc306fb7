#!/usr/bin/env bash
# Unpack dist/taoflow.xz (the stripped release binary built on the development machine)
# with Python's lzma (the GPU machine has no xz) and print the binary's path.
set -euo pipefail
DEST=${TMPDIR:-/tmp}/taoflow-bin
if [ ! -x "$DEST" ] || [ dist/taoflow.xz -nt "$DEST" ]; then
  python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' dist/taoflow.xz "$DEST"
  chmod +x "$DEST"
fi
echo "$DEST"
