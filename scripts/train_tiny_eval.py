"""The rows of lesson 12's `toy.evaluate_v2` (issue 18's acceptance table), one group at a time, so that they can be
computed in several processes (or for an intermediate checkpoint) and merged into data/toy_v2_eval.json.
usage: python scripts/train_tiny_eval.py OUT.json GROUP[,GROUP…] [V2_DIR=data/tiny-sd] [INPAINT_DIR=data/tiny-sd-inpainting]
GROUP: full, square-full, partial, negative, sizes, square-sizes, img2img, inpaint, blend, square-blend, attention.
"square-…" rows use the square-only UNet (data/tiny-sd-square-unet) with V2_DIR's VAE, text encoder and tokenizer.
   python scripts/train_tiny_eval.py --merge RECORD.json PART.json […]: put the parts' rows into RECORD's "eval" (a row
replaces the stored row of the same model, row and prompt), in `evaluate_v2`'s order, and their seconds into
"eval_seconds" (wall) and "eval_cpu_seconds"."""
import json, sys, time
from pathlib import Path
import torch
from sd_from_scratch import toy
from sd_from_scratch.pipeline import StableDiffusion
from sd_from_scratch.unet import UNet2DConditionModel

def _order(r: dict) -> int:
    "The place of a row's kind in `evaluate_v2`'s order."
    m, row = r["model"], r["row"]
    if row in ("full caption", '"" (empty)'): return 0 if m == "square-only" else 1
    if row in ("partial prompt", "negative prompt"): return 2 if row == "partial prompt" else 3
    if row.startswith("size"): return 4 if m == "square-only" else 5
    if row.startswith("img2img"): return 6
    if row.startswith("inpaint"): return {"9-channel inpainting": 7, "square-only, 4-channel blend": 8}.get(m, 9)
    return 10


def merge(record_path: Path, parts: list[Path]) -> dict:
    record = json.loads(record_path.read_text())
    def key(r): return (r["model"], r["row"], r.get("prompt"), r.get("w"))
    new = [r for p in parts for r in json.loads(p.read_text())]
    fresh = {key(r) for r in new}
    rows = sorted([r for r in record["eval"] if key(r) not in fresh] + new, key=_order)
    took = {(r["_group"], r["_took"]["wall_s"], r["_took"]["cpu_s"]): r["_took"] for r in new}     # one per group
    record["eval"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    record["eval_seconds"] = round(sum(t["wall_s"] for t in took.values()))
    record["eval_cpu_seconds"] = round(sum(t["cpu_s"] for t in took.values()))
    record_path.write_text(json.dumps(record, indent=1))
    return record


if sys.argv[1] == "--merge":
    merge(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]); raise SystemExit(0)
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
