#!/usr/bin/env bash
# Unpack dist/NAME.xz (a stripped release binary built on the development machine; NAME
# defaults to taoflow) with Python's lzma (the GPU machine has no xz) and print its path.
set -euo pipefail
NAME=${1:-taoflow}
DEST=${TMPDIR:-/tmp}/$NAME-bin
if [ ! -x "$DEST" ] || [ "dist/$NAME.xz" -nt "$DEST" ]; then
  python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' "dist/$NAME.xz" "$DEST"
  chmod +x "$DEST"
fi
echo "$DEST"
