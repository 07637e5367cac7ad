#!/usr/bin/env bash
# Retrain the shipped tiny model from scratch, as it was trained (lesson 12): the VAE and the toy CLIP in one process
# (2 threads), then the UNet data-parallel in 2 CPU processes with accelerate (batch 32 each = global batch 64).
# About 20 minutes on 2 free cores. Stages already done in RUN_DIR are skipped; a killed UNet stage resumes from
# its last checkpoint. The finished pipeline is RUN_DIR/pipeline (copy it to data/tiny-sd to ship it).
#   usage: bash scripts/train_tiny.sh [RUN_DIR=outputs/toy-run] [UNET_OVERRIDES_JSON, e.g. '{"max_steps": 10}']
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
RUN=${1:-outputs/toy-run}
OVR=${2:-"{}"}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
t0=$(date +%s)
.venv/bin/python - "$RUN" <<'PY'
import sys, torch
torch.set_num_threads(2)
from sd_from_scratch.toy import stage_vae, stage_clip
for name, stage in (("vae", stage_vae), ("clip", stage_clip)):
    info = stage(sys.argv[1], progress=False)
    print(name, {k: v for k, v in info.items() if k != "losses"}, flush=True)
PY
UNET=$(.venv/bin/python -c 'import json, sys; print(json.dumps({"batch_size": 32, **json.loads(sys.argv[1])}))' "$OVR")
.venv/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
  --num_cpu_threads_per_process 1 scripts/train_tiny_unet.py "$RUN" "$UNET"
.venv/bin/python -c "import sys; from sd_from_scratch.toy import build_tiny_sd; print('pipeline:', build_tiny_sd(sys.argv[1], progress=False)['pipeline'])" "$RUN"
echo "total: $(( $(date +%s) - t0 )) s wall"
