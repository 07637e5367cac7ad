"""Whole-pipeline CPU time: our StableDiffusion vs diffusers' StableDiffusionPipeline, same tiny random model (saved by
diffusers, loaded by ours), same prompt, seed, sampler and steps, one process, same threads.

Times are interleaved (ours, diffusers, ours, …) so that load from other processes hits both alike; we report the
best of N wall-clock times and the process CPU time of that run.
usage: python bench/pipeline.py [steps=20] [threads=1] [size=64] [repeats=5] [sampler=pndm]"""
import sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures import make_tiny_sd                                       # noqa: E402
from sd_from_scratch.pipeline import StableDiffusion                     # noqa: E402
from diffusers.utils import logging as dlogging                          # noqa: E402

dlogging.set_verbosity_error()
warnings.simplefilter("ignore")
args = sys.argv[1:]
steps = int(args[0]) if len(args) > 0 else 20
torch.set_num_threads(int(args[1]) if len(args) > 1 else 1)
size = int(args[2]) if len(args) > 2 else 64
repeats = int(args[3]) if len(args) > 3 else 5
sampler = args[4] if len(args) > 4 else "pndm"

folder = Path(tempfile.mkdtemp(prefix="sdfs_bench_")) / "tiny"
ref = make_tiny_sd(folder)
ref.set_progress_bar_config(disable=True)
ours = StableDiffusion.from_pretrained(folder)
ours.progress = False
from diffusers import (PNDMScheduler, DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                       LMSDiscreteScheduler, DPMSolverMultistepScheduler)
ref.scheduler = {"pndm": PNDMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
                 "euler_a": EulerAncestralDiscreteScheduler, "lms": LMSDiscreteScheduler,
                 "dpmpp_2m": DPMSolverMultistepScheduler}[sampler].from_config(ours.scheduler_config)
prompt, neg = "a red 7 on a blue background", "blurry"

def run_ours():
    return ours(prompt, negative_prompt=neg, height=size, width=size, steps=steps, sampler=sampler, seed=0, output_type="np")

def run_diffusers():
    return ref(prompt, negative_prompt=neg, height=size, width=size, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0), output_type="np").images

def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out

with torch.inference_mode():
    a, b = run_ours(), run_diffusers()                                   # warm-up (and parity)
    res = {"ours": [], "diffusers": []}
    for _ in range(repeats):
        res["ours"].append(timed(run_ours)[:2])
        res["diffusers"].append(timed(run_diffusers)[:2])

print(f"tiny SD (UNet {sum(p.numel() for p in ours.unet.parameters()):,} params), {size}×{size}, {steps} {sampler} steps, "
      f"CFG 7.5 + negative prompt, {torch.get_num_threads()} thread(s); best of {repeats}, interleaved")
print(f"max |Δ| ours vs diffusers on the [0,1] images: {np.abs(a - b).max():.2e}")
best = {k: min(v) for k, v in res.items()}
print(f"{'':10s} {'wall s':>8s} {'cpu s':>8s}")
for k, (w, c) in best.items(): print(f"{k:10s} {w:8.3f} {c:8.3f}")
print(f"ratio ours/diffusers: wall {best['ours'][0] / best['diffusers'][0]:.2f}, cpu {best['ours'][1] / best['diffusers'][1]:.2f}")
