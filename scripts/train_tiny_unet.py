"""Stages 3-5 of the tiny model (lesson 12's `toy.stage_unet`, `toy.stage_v2`, `toy.stage_inpaint`), one copy per
process under `accelerate launch`.
usage: accelerate launch … scripts/train_tiny_unet.py RUN_DIR '{"batch_size": 32}' [unet|v2|v2-anywhere|inpainting] [BASE]
(see scripts/train_tiny.sh). v2 fine-tunes BASE (default RUN_DIR/pipeline) on the buckets of `toy.BUCKET_WEIGHTS`, the
digit at the centre of its canvas (`toy.BUCKET_JITTER`; the shipped data/tiny-sd); v2-anywhere is the first v2 recipe
(40 % square canvases, the digit anywhere on its canvas: 58 / 63 % one digit at 64×32 / 32×64, recorded in
data/toy_v2_eval.json; scripts/train_tiny.sh does not run it); inpainting fine-tunes BASE (default RUN_DIR/pipeline-v2)."""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from sd_from_scratch.toy import stage_unet, stage_v2, stage_inpaint

FIRST_V2 = dict(weights=(0.4, 0.15, 0.15, 0.15, 0.15), jitter=None)

run = sys.argv[1]
train = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
stage = sys.argv[3] if len(sys.argv) > 3 else "unet"
base = sys.argv[4] if len(sys.argv) > 4 else None
if stage == "unet": info = stage_unet(run, unet_train=train, progress=False)
elif stage == "v2": info = stage_v2(run, base=base or Path(run) / "pipeline", train=train, progress=False)
elif stage == "v2-anywhere": info = stage_v2(run, base=base or Path(run) / "pipeline", train=train, progress=False,
                                             name="v2-anywhere", **FIRST_V2)
elif stage == "inpainting": info = stage_inpaint(run, base=base, train=train, progress=False)
else: raise SystemExit(f"unknown stage {stage!r}: choose unet, v2, v2-anywhere or inpainting")
print(stage, {k: v for k, v in info.items() if k != "losses"}, flush=True)
