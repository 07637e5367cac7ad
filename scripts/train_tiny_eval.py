"""The rows of lesson 12's `toy.evaluate_v2` (issue 18's acceptance table), one group at a time, so that they can be
computed in several processes (or for an intermediate checkpoint) and merged into data/toy_v2_eval.json.
usage: python scripts/train_tiny_eval.py OUT.json GROUP[,GROUP…] [V2_DIR=data/tiny-sd] [INPAINT_DIR=data/tiny-sd-inpainting]
GROUP: full, square-full, partial, negative, sizes, square-sizes, img2img, inpaint, blend, square-blend, attention.
"square-…" rows use the square-only UNet (data/tiny-sd-square-unet) with V2_DIR's VAE, text encoder and tokenizer."""
import json, sys, time
from pathlib import Path
import torch
from sd_from_scratch import toy
from sd_from_scratch.pipeline import StableDiffusion
from sd_from_scratch.unet import UNet2DConditionModel

out, groups = Path(sys.argv[1]), sys.argv[2].split(",")
v2_dir = Path(sys.argv[3]) if len(sys.argv) > 3 else toy.repo_data_dir() / "tiny-sd"
inp_dir = Path(sys.argv[4]) if len(sys.argv) > 4 else toy.repo_data_dir() / "tiny-sd-inpainting"
n = 100
clf = toy.load_digit_classifier()
v2 = StableDiffusion.from_pretrained(v2_dir)
square = StableDiffusion(UNet2DConditionModel.from_pretrained(toy.repo_data_dir() / "tiny-sd-square-unet").eval(),
                         v2.vae, v2.text_encoder, v2.tokenizer, v2.scheduler_config)
for p in (v2, square): p.progress = False
jobs = {"full": ("v2", lambda: toy.eval_full(v2, clf, n)), "square-full": ("square-only", lambda: toy.eval_full(square, clf, n)),
        "partial": ("v2", lambda: toy.eval_partial(v2, clf, n)), "negative": ("v2", lambda: toy.eval_negative(v2, clf, n)),
        "sizes": ("v2", lambda: toy.eval_sizes(v2, clf, n=n)), "square-sizes": ("square-only", lambda: toy.eval_sizes(square, clf, n=n)),
        "img2img": ("v2", lambda: toy.eval_img2img(v2, clf, n)),
        "inpaint": ("9-channel inpainting", lambda: toy.eval_inpaint(StableDiffusion.from_pretrained(inp_dir), clf, n)),
        "blend": ("v2, 4-channel blend", lambda: toy.eval_inpaint(v2, clf, n)),
        "square-blend": ("square-only, 4-channel blend", lambda: toy.eval_inpaint(square, clf, n)),
        "attention": ("v2", lambda: toy.eval_attention(v2, clf, n))}
bad = [g for g in groups if g not in jobs]
if bad: raise SystemExit(f"unknown group(s) {bad}: choose from {', '.join(jobs)}")
rows = json.loads(out.read_text()) if out.exists() else []
for g in groups:
    model, job = jobs[g]
    t0, c0 = time.time(), time.process_time()
    r = job()
    took = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
    for row in (r if isinstance(r, list) else [r]): rows.append({"model": model, **row, "_group": g, "_took": took})
    out.write_text(json.dumps(rows, indent=1))
    print(g, took, [{k: v for k, v in row.items() if k not in ("model",)} for row in (r if isinstance(r, list) else [r])], flush=True)
