"""Stages 3-5 of the tiny model (lesson 12's `toy.stage_unet`, `toy.stage_v2`, `toy.stage_inpaint`), one copy per
process under `accelerate launch`.
usage: accelerate launch … scripts/train_tiny_unet.py RUN_DIR '{"batch_size": 32}' [unet|v2|v2b|v2c|inpainting] [BASE]
(see scripts/train_tiny.sh). v2 fine-tunes BASE (default RUN_DIR/pipeline) on the buckets of `toy.BUCKET_WEIGHTS`;
v2b ("stage 4b") goes on from BASE (default RUN_DIR/pipeline-v2) with more of the wide and tall canvases
(`WIDE_WEIGHTS`); v2c ("stage 4c") goes on from BASE (default RUN_DIR/pipeline-v2b) with a lower learning rate
(`V2C_TRAIN`) and still more of them (`WIDER_WEIGHTS`). 4b/4c are experiments (not shipped: they reached 80-87 % one digit
at 64×32 / 32×64, below the 90 % target; see data/toy_v2_eval.json) and scripts/train_tiny.sh does not run them. inpainting fine-tunes BASE (default RUN_DIR/pipeline-v2)."""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from sd_from_scratch.toy import stage_unet, stage_v2, stage_inpaint

# stage 4b's share of each bucket of toy.BUCKETS ((32, 32), (48, 32), (32, 48), (64, 32), (32, 64)): stage 4 gave
# 64×32 and 32×64 15 % each and left 58 % / 63 % of their samples with one digit; 4b gives them 30 % each
WIDE_WEIGHTS = (0.2, 0.1, 0.1, 0.3, 0.3)
# stage 4b levelled off at 80 % one digit (steps 250-400 at lr 5e-4); 4c anneals at a lower rate, on 80 % wide/tall
WIDER_WEIGHTS = (0.1, 0.05, 0.05, 0.4, 0.4)
V2C_TRAIN = {"lr": 2e-4}

run = sys.argv[1]
train = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
stage = sys.argv[3] if len(sys.argv) > 3 else "unet"
base = sys.argv[4] if len(sys.argv) > 4 else None
if stage == "unet": info = stage_unet(run, unet_train=train, progress=False)
elif stage == "v2": info = stage_v2(run, base=base or Path(run) / "pipeline", train=train, progress=False)
elif stage == "v2b": info = stage_v2(run, base=base or Path(run) / "pipeline-v2", train=train, progress=False,
                                     weights=WIDE_WEIGHTS, name="v2b")
elif stage == "v2c": info = stage_v2(run, base=base or Path(run) / "pipeline-v2b", train={**V2C_TRAIN, **train}, progress=False,
                                     weights=WIDER_WEIGHTS, name="v2c")
elif stage == "inpainting": info = stage_inpaint(run, base=base, train=train, progress=False)
else: raise SystemExit(f"unknown stage {stage!r}: choose unet, v2, v2b, v2c or inpainting")
print(stage, {k: v for k, v in info.items() if k != "losses"}, flush=True)
