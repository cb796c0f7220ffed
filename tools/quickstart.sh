#!/usr/bin/env bash
# The README's main job on the embedded default (no downloads, no datasets): sets up (or reuses) the
# virtual environment, generates the synthetic detection benchmark, trains Faster R-CNN with the EBM
# head on the CPU, and prints COCO box AP of unrefined, EBM-refined and IoU-Net-refined boxes.
# Output: ./output/quickstart (override with EBM_OUTPUT). Extra arguments go to the benchmark script,
# e.g. `bash tools/quickstart.sh --quick`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
PY="${EBM_VENV:-$ROOT/.venv}/bin/python"
OUT="${EBM_OUTPUT:-$ROOT/output/quickstart}"
mkdir -p "$OUT"
cd "$ROOT"
export MPLBACKEND=Agg
export EBM_DATASETS="${EBM_DATASETS:-$ROOT/datasets}"
exec "$PY" tools/synthetic_benchmark.py --output "$OUT/detection" "$@"
