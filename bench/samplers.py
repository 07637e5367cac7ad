"""Sampler overhead: ours vs diffusers' scheduler loop, same trivial model, same SD-sized latents, one process.

The model is nearly free (a scaled copy of its input), so the times are the samplers' own bookkeeping and arithmetic.
usage: python bench/samplers.py [steps] [threads]"""
import sys, time, warnings
import torch
from diffusers import (DDPMScheduler, DDIMScheduler, PNDMScheduler, LMSDiscreteScheduler, EulerDiscreteScheduler,
                       EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler)
from diffusers.utils import logging as dlogging
from sd_from_scratch.samplers import SAMPLERS, SD_V1_SCHEDULER_CONFIG as SD, sample

dlogging.set_verbosity_error()
warnings.simplefilter("ignore")
REF = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "pndm": PNDMScheduler, "lms": LMSDiscreteScheduler,
       "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler, "heun": HeunDiscreteScheduler,
       "dpmpp_2m": DPMSolverMultistepScheduler, "dpmpp_2m_karras": DPMSolverMultistepScheduler}
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 50
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
model = lambda x, t: 0.1 * x
noise = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))

def ref(name):
    sch = REF[name].from_config(SD, **({"use_karras_sigmas": True} if name == "dpmpp_2m_karras" else {}))
    sch.set_timesteps(steps)
    x, g = noise * sch.init_noise_sigma, torch.Generator().manual_seed(1)
    kw = {"generator": g} if name in ("ddpm", "euler_a") else {}
    for t in sch.timesteps: x = sch.step(model(sch.scale_model_input(x, t), t), t, x, **kw).prev_sample
    return x

def ours(name): return sample(model, noise, name, steps, SD, generator=torch.Generator().manual_seed(1))

def best(fn, name, n=5):
    fn(name)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(name); ts.append(time.perf_counter() - t0)
    return min(ts)

print(f"{steps} steps, 1×4×64×64 latents, {torch.get_num_threads()} thread(s); best of 5, ms per full loop")
print(f"{'sampler':16s} {'ours':>8s} {'diffusers':>10s} {'ours/diffusers':>15s}")
for name in SAMPLERS:
    a, b = best(ours, name), best(ref, name)
    print(f"{name:16s} {a * 1e3:8.1f} {b * 1e3:10.1f} {a / b:15.2f}")
