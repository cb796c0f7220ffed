#!/usr/bin/env bash
# The README's main job on the embedded default (no downloads, no datasets):
# sets up (or reuses) the virtual environment, then runs the benchmark and prints its table.
# Output goes to ./output/quickstart (override with EBM_OUTPUT).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
PY="${EBM_VENV:-$ROOT/.venv}/bin/python"
OUT="${EBM_OUTPUT:-$ROOT/output/quickstart}"
mkdir -p "$OUT"
cd "$ROOT"
export MPLBACKEND=Agg
exec "$PY" tools/toy_benchmark.py --json "$OUT/toy_benchmark.json" --png "$OUT/toy_densities.png" "$@"
