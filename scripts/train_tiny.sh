#!/usr/bin/env bash
# Retrain the shipped tiny models, as they were trained (lesson 12):
#   stages 1-2: the VAE and the toy CLIP in one process (2 threads);
#   stage 3:    the square-only UNet, data-parallel in 2 CPU processes with accelerate (batch 32 each = global 64);
#   stage 4:    "v2", the stage-3 UNet fine-tuned on aspect-ratio buckets with partial captions (2 processes);
#   stage 5:    the 9-channel inpainting UNet, fine-tuned with random masks from stage 4's EMA weights at step
#               INPAINT_FROM (default 100, as shipped: it ran beside stage 4 to fit the session; "final" = the end of stage 4).
# Stages already done in RUN_DIR are skipped; a killed stage (kill -9) resumes from its last checkpoint.
# Results: RUN_DIR/pipeline (square-only), RUN_DIR/pipeline-v2 (copy to data/tiny-sd to ship it),
# RUN_DIR/pipeline-inpainting (copy to data/tiny-sd-inpainting). Training runs under `nice -n 10`.
#   usage: bash scripts/train_tiny.sh [RUN_DIR=outputs/toy-run] [UNET_OVERRIDES_JSON, e.g. '{"max_steps": 10}']
#                                     [V2_OVERRIDES_JSON] [INPAINT_OVERRIDES_JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
RUN=${1:-outputs/toy-run}
OVR=${2:-"{}"}
V2OVR=${3:-"{}"}
INPOVR=${4:-"{}"}
INPAINT_FROM=${INPAINT_FROM:-100}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
NICE="nice -n 10"
LAUNCH=(.venv/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no
        --num_cpu_threads_per_process 1)
t0=$(date +%s)
.venv/bin/python - "$RUN" <<'PY'
import sys, torch
torch.set_num_threads(2)
from sd_from_scratch.toy import stage_vae, stage_clip
for name, stage in (("vae", stage_vae), ("clip", stage_clip)):
    info = stage(sys.argv[1], progress=False)
    print(name, {k: v for k, v in info.items() if k != "losses"}, flush=True)
PY
with_batch() { .venv/bin/python -c 'import json, sys; print(json.dumps({"batch_size": 32, **json.loads(sys.argv[1])}))' "$1"; }
$NICE "${LAUNCH[@]}" scripts/train_tiny_unet.py "$RUN" "$(with_batch "$OVR")" unet
.venv/bin/python -c "import sys; from sd_from_scratch.toy import build_tiny_sd; print('pipeline:', build_tiny_sd(sys.argv[1], progress=False)['pipeline'])" "$RUN"
t3=$(date +%s)
# stage 4 keeps its early checkpoints (keep_last 20) so that stage 5 can start from step INPAINT_FROM
$NICE "${LAUNCH[@]}" scripts/train_tiny_unet.py "$RUN" "$(with_batch "{\"keep_last\": 20, ${V2OVR#\{}" | sed 's/, }/}/')" v2 "$RUN/pipeline"
t4=$(date +%s)
if [ "$INPAINT_FROM" = "final" ]; then INP_BASE="$RUN/pipeline-v2"; else
  INP_BASE="$RUN/pipeline-v2-at$INPAINT_FROM"
  .venv/bin/python -c "import sys; from sd_from_scratch.toy import pipeline_from_checkpoint as p; p(*sys.argv[1:])" \
    "$RUN/v2_run/checkpoint-$INPAINT_FROM" "$RUN/pipeline" "$INP_BASE"
fi
$NICE "${LAUNCH[@]}" scripts/train_tiny_unet.py "$RUN" "$(with_batch "$INPOVR")" inpainting "$INP_BASE"
t5=$(date +%s)
echo "stages 1-3: $(( t3 - t0 )) s, stage 4 (v2): $(( t4 - t3 )) s, stage 5 (inpainting): $(( t5 - t4 )) s wall; total $(( t5 - t0 )) s"
