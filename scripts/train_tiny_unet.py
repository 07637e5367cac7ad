"""Stage 3 of the tiny model (lesson 12's `toy.stage_unet`), one copy per process under `accelerate launch`.
usage: accelerate launch … scripts/train_tiny_unet.py RUN_DIR '{"batch_size": 32}'   (see scripts/train_tiny.sh)"""
import json, sys
import torch
torch.set_num_threads(1)
from sd_from_scratch.toy import stage_unet

info = stage_unet(sys.argv[1], unet_train=json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}, progress=False)
print({k: v for k, v in info.items() if k != "losses"}, flush=True)
