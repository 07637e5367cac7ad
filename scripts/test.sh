#!/usr/bin/env bash
# Sets up .venv if needed, then runs every test: each notebook top to bottom (nbdev's runner) and tests/*.py.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k schedule   or   SDFS_SLOW=1 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
