#!/usr/bin/env bash
# Sets up .venv if needed, then runs the main job: generate an image with the tiny model this project trained
# (data/tiny-sd) on CPU, writing a PNG whose "parameters" chunk reproduces it. Arguments go to `sdfs generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ "$#" -eq 0 ]; then set -- "a red 7 on a blue background" --seed 0; fi
exec .venv/bin/sdfs generate "$@"
