#!/usr/bin/env bash
# The project's test command: set up (or reuse) the virtual environment, then run the whole suite.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh tests/core -x`; skip the end-to-end tests with
# `bash tools/run_tests.sh -m "not slow"`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
export MPLBACKEND=Agg
exec "${EBM_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
