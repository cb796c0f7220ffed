#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install everything ebm_refine needs.
#
# Idempotent: a second run with unchanged requirements only checks the stamp file and returns.
# Usage:  bash tools/setup_env.sh            (venv in ./.venv, or $EBM_VENV)
#         EBM_SETUP_FORCE=1 bash tools/setup_env.sh   (re-run every install step)
#
# Detectron2: if `import detectron2` already works in the venv it is kept as it is (e.g. a source build
# by a user who is online). Otherwise we install PyPI's `sal-detectron2==0.7.2`, a build of upstream
# Detectron2 whose wheel is tagged for CPython 3.10 only. Its Python code works on 3.11 (the compiled
# `_C` extension is not loaded and not needed by anything we use), so we save the wheel under a
# `py3-none-any` file name and let pip install it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EBM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

STAMP="$VENV/.ebm_refine_setup"
# Anything that changes what must be installed changes the stamp.
WANT="$(cat "$ROOT/tools/setup_env.sh" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"

if [[ -z "${EBM_SETUP_FORCE:-}" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
   && "$VENV/bin/python" -c "import ebm_refine, torch, detectron2" >/dev/null 2>&1; then
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

# PyTorch first, pinned: an unpinned torch would pull a multi-GB download.
if ! "$VPY" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1"
  "${PIP[@]}" torch==2.14.1 torchvision==0.29.1
fi

# Detectron2's Python dependencies (pkg_resources needs setuptools<81; detectron2 0.6/0.7 need numpy<2).
"${PIP[@]}" "numpy<2" "setuptools<81" wheel fvcore iopath pycocotools

if ! "$VPY" -c "import detectron2" >/dev/null 2>&1; then
  echo "[setup] installing Detectron2 (sal-detectron2==0.7.2 as a py3-none-any wheel)"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "$VPY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
      --python-version 3.10 -d "$TMP" sal-detectron2==0.7.2
  WHL="$(ls "$TMP"/sal_detectron2-0.7.2-*.whl)"
  cp "$WHL" "$TMP/sal_detectron2-0.7.2-py3-none-any.whl.tmp"
  mv "$TMP/sal_detectron2-0.7.2-py3-none-any.whl.tmp" "$TMP/sal_detectron2-0.7.2-py3-none-any.whl"
  rm -f "$WHL"
  "${PIP[@]}" "$TMP/sal_detectron2-0.7.2-py3-none-any.whl"
fi

# opencv-python-headless and opencv-contrib-python-headless both install the cv2 module; a plain one left
# from an older install (or pulled in by another package) would shadow the contrib trackers we need.
if "$VPY" -m pip show -q opencv-python-headless >/dev/null 2>&1; then
  echo "[setup] replacing opencv-python-headless by opencv-contrib-python-headless (same cv2, plus the trackers)"
  "$VPY" -m pip uninstall -y -q opencv-python-headless
  "${PIP[@]}" --force-reinstall --no-deps opencv-contrib-python-headless
fi

echo "[setup] installing ebm_refine (editable) and its dependencies"
"${PIP[@]}" -e "$ROOT[dev]"

"$VPY" -c "import ebm_refine, torch, detectron2; print('[setup] ok: torch', torch.__version__, '| detectron2', detectron2.__version__)"
echo "$WANT" > "$STAMP"
