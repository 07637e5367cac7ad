#!/usr/bin/env bash
# Every GPU measurement of this project in one call, at most 8 minutes on an H200 (see bench/gpu_all.py and
# bench/README.md, "GPU figures"). Works offline: if diffusers or transformers is missing, it installs them from
# ./wheels (prepared on any machine with internet, see the README) into a venv that reuses the system's CUDA torch.
#   bash bench/gpu_all.sh [--out DIR] [--budget 420] [--steps 50]     # writes DIR (default $OUT) /gpu_all.{md,json}
#   bash bench/gpu_all.sh --dry-run                                   # CPU, tiny config: the same code path
set -euo pipefail
export SDFS_T0=${SDFS_T0:-$(date +%s)}                  # the time budget counts the install too
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi; fi
missing() { "$1" -c "import importlib.util as u; print(' '.join(m for m in ('diffusers', 'transformers') if not u.find_spec(m)))"; }
need=$(missing "$PYTHON")
if [ -n "$need" ]; then
  if ! compgen -G "wheels/*.whl" >/dev/null; then
    echo "bench/gpu_all.sh: $need missing in $PYTHON and no wheels/*.whl to install from; see bench/README.md (GPU figures)" >&2
    exit 1
  fi
  venv=${SDFS_GPU_VENV:-/tmp/sdfs-gpu-venv}              # system site packages: the image's CUDA torch, triton, numpy, ...
  echo "installing $need from wheels/ into $venv (offline, --no-index) ..."
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv --system-site-packages "$venv" 2>/dev/null || "$PYTHON" -m venv --system-site-packages --without-pip "$venv"
  fi
  if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then pip=("$venv/bin/python" -m pip)
  else pip=("$PYTHON" -m pip --python "$venv/bin/python"); fi
  "${pip[@]}" install -q --no-index --find-links wheels $need
  PYTHON=$venv/bin/python
  need=$(missing "$PYTHON")
  [ -z "$need" ] || { echo "bench/gpu_all.sh: still missing after the install: $need" >&2; exit 1; }
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$PYTHON" bench/gpu_all.py "$@"
