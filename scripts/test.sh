#!/usr/bin/env bash
# Sets up .venv if needed, then runs every test: each notebook top to bottom (nbdev's runner) and tests/*.py.
# Tests run in one process per CPU core (pytest-xdist, at most 4; SDFS_WORKERS=1 for one), each process on one torch
# thread (more threads than cores make OpenMP threads wait for each other). A single process leaves a core idle
# through everything that is not a large matrix product (imports, subprocesses starting, Python between small ops);
# on 2 cores the whole suite took 606–663 s this way against 1062 s in one process on 2 threads.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k schedule   or   SDFS_SLOW=1 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
cores=$(nproc 2>/dev/null || echo 1)
workers=${SDFS_WORKERS:-$(( cores < 4 ? cores : 4 ))}
if [ "$workers" -gt 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
  exec .venv/bin/python -m pytest tests -q -p no:cacheprovider -n "$workers" --dist worksteal "$@"
fi
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
