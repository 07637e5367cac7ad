#!/usr/bin/env bash
# Sets up .venv if needed, then runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
mkdir -p outputs
exec .venv/bin/python scripts/forward_demo.py "$@"
