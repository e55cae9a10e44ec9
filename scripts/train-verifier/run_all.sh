#!/usr/bin/env bash
# End-to-end rerun of the shipped verifier (two training stages, then export,
# quantisation and measurement). Run from anywhere:
#   bash scripts/train-verifier/run_all.sh [OUT_DIR]   (default assets/verifier)
# Uses $PY (default /root/.cache/train-venv/bin/python) and $VERIFIER_WORK
# (default /root/.cache/verifier-work) for scratch.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PY:-/root/.cache/train-venv/bin/python}"
WORK="${VERIFIER_WORK:-/root/.cache/verifier-work}"
OUT="${1:-$REPO/assets/verifier}"
cd "$REPO"
# stage 1: from the base weights, 1 epoch over real + generated pairs (gen ratio 1.0), lr 4e-5
"$PY" "$HERE/train.py" --out "$OUT" --tag stage1 --epochs 1 --lr 4e-5 --gen-ratio 1.0 --evals 5 --no-export
# stage 2: from stage 1's best checkpoint, 550 steps, gen ratio 0.5, lr 3e-5 (fresh warmup + linear decay);
# then export + quantise to $OUT/model.onnx and measure ($OUT/MEASURED.md, $OUT/SHA256SUMS)
"$PY" "$HERE/train.py" --out "$OUT" --tag main --init "$WORK/best-stage1.pt" --steps 550 --lr 3e-5 --gen-ratio 0.5 --evals 5
