#!/usr/bin/env bash
# Builds ./.venv once (and again when settings.ini or setup.py change), with
#   - on a machine without an NVIDIA GPU: a CPU torch from the package registry;
#   - on a machine where `nvidia-smi` sees a GPU and the system python's torch sees CUDA: that torch, through a venv
#     made with --system-site-packages (GPU images ship a CUDA torch, triton, ...; nothing is downloaded for torch,
#     and never from an outside index such as download.pytorch.org);
#   - this package in editable mode with its dev/notebook extras (diffusers, transformers, nbdev 2, ...);
#   - never torchvision or timm (a CUDA torchvision beside a CPU torch breaks transformers/diffusers imports).
# Offline (a GPU machine without internet): put the missing wheels in ./wheels (see bench/README.md, "GPU figures");
# pip then installs only from there (--no-index --find-links wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=.venv/bin
pip_src=()
if [ -d wheels ] && compgen -G "wheels/*.whl" >/dev/null; then pip_src=(--no-index --find-links wheels); fi
gpu=0; command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && gpu=1
has_cuda() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }
sys_cuda=0
if [ "$gpu" = 1 ] && has_cuda "$PY"; then sys_cuda=1; fi
if [ ! -x .venv/bin/python ]; then
  if [ "$sys_cuda" = 1 ]; then
    echo "a GPU is present and $PY's torch sees CUDA: .venv uses it (--system-site-packages)"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
stamp=".venv/.installed-$(cat settings.ini setup.py | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (first run: about a minute) ..."
  "$V/python" -m pip install -q --upgrade pip ${pip_src[@]+"${pip_src[@]}"} || echo "(could not upgrade pip; keeping $("$V/python" -m pip --version))"
  if ! "$V/python" -c "import torch" 2>/dev/null; then
    "$V/python" -m pip install -q ${pip_src[@]+"${pip_src[@]}"} "torch==2.13.0"
  fi
  if [ "$gpu" = 1 ] && ! has_cuda "$V/python"; then
    echo "warning: a GPU is present but .venv's torch does not see CUDA, so everything runs on the CPU. To use the GPU," \
         "install a CUDA build of torch into $PY (not from here: this script never downloads torch from an outside index)," \
         "then remove .venv and run this script again: it will reuse that torch." >&2
  fi
  "$V/python" -m pip install -q ${pip_src[@]+"${pip_src[@]}"} -e ".[dev]"
  "$V/python" -m pip uninstall -y -q torchvision timm >/dev/null 2>&1 || true
  rm -f .venv/.installed-*
  touch "$stamp"
fi
if "$V/python" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torchvision') else 1)"; then
  # with --system-site-packages a system torchvision built with the same CUDA torch is harmless: it imports
  if [ "$sys_cuda" = 1 ] && "$V/python" -c "import torch, torchvision" >/dev/null 2>&1; then exit 0; fi
  echo "torchvision is installed in .venv; it breaks transformers/diffusers beside a CPU torch. Remove it: .venv/bin/pip uninstall torchvision" >&2
  exit 1
fi
