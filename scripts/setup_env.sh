#!/usr/bin/env bash
# Builds ./.venv once (and again when settings.ini or setup.py change), with
#   - a CPU torch on a machine without an NVIDIA GPU, a CUDA torch where `nvidia-smi` sees one;
#   - this package in editable mode with its dev/notebook extras (diffusers, transformers, nbdev 2, ...);
#   - never torchvision or timm (a CUDA torchvision beside a CPU torch breaks transformers/diffusers imports).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
V=.venv/bin
stamp=".venv/.installed-$(cat settings.ini setup.py | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (first run: about a minute) ..."
  "$V/python" -m pip install -q --upgrade pip
  gpu=0; command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && gpu=1
  if ! "$V/python" -c "import torch" 2>/dev/null; then
    "$V/python" -m pip install -q "torch==2.13.0"
  fi
  if [ "$gpu" = 1 ] && ! "$V/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "a GPU is present but torch is a CPU build: installing the CUDA build of torch 2.13.0"
    "$V/python" -m pip install -q --force-reinstall "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu128
  fi
  "$V/python" -m pip install -q -e ".[dev]"
  "$V/python" -m pip uninstall -y -q torchvision timm >/dev/null 2>&1 || true
  rm -f .venv/.installed-*
  touch "$stamp"
fi
if "$V/python" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torchvision') else 1)"; then
  echo "torchvision is installed in .venv; it breaks transformers/diffusers beside a CPU torch. Remove it: .venv/bin/pip uninstall torchvision" >&2
  exit 1
fi
