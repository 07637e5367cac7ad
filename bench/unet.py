"""Ours vs diffusers: the SD v1.5 UNet forward (ε prediction), fp32 on CPU, batch 2×4×64×64, 77×768 text context.

Time: ONE process, the SAME weights (our model is built on the meta device and gets diffusers' tensors assigned, so
both read identical memory), the same inputs and thread count; one warm-up each, then `--rounds` alternating rounds;
we print the best time of each and the ratio ours/diffusers (plus the median of the per-round ratios).

Peak memory: each model runs in its OWN child process (so neither sees the other's allocations). In the child, glibc's
mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_) so that freed tensors go back to the OS and the resident set tracks
live memory; the model is built, one warm-up forward is run, Linux's peak-RSS counter is reset (write 5 to
/proc/self/clear_refs) and the measured forward runs. We report (peak RSS during the forward − RSS before it): the extra
memory the forward needs on top of the weights, and also the whole process's peak. Ratios are ours/diffusers.

Where CUDA is available, the same comparison runs in fp16 on the GPU (time with cuda.synchronize, peak memory with
torch.cuda.max_memory_allocated); on a CPU-only machine that part says so and is skipped.

usage: python bench/unet.py [--threads N] [--rounds R] [--size 64] [--batch 2] [--no-memory] [--no-cuda] [--fuse-qkv]
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sd_from_scratch.unet import UNet2DConditionModel, SD15_UNET_CONFIG, load_strict


def make_inputs(batch, size, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g).to(device, dtype)
    ctx = torch.randn(batch, 77, 768, generator=g).to(device, dtype)
    return x, torch.tensor(500, device=device), ctx


def build_pair(device="cpu", dtype=torch.float32):
    "diffusers UNet with seeded random weights, and ours sharing the very same tensors."
    from diffusers import UNet2DConditionModel as D
    torch.manual_seed(0)
    theirs = D(**SD15_UNET_CONFIG).eval()
    if device != "cpu" or dtype != torch.float32: theirs = theirs.to(device, dtype)
    with torch.device("meta"): ours = UNet2DConditionModel(SD15_UNET_CONFIG)
    load_strict(ours, theirs.state_dict()).eval()
    return ours, theirs


def run(model, x, t, ctx, is_ours):
    return model(x, t, ctx) if is_ours else model(x, t, ctx).sample


def sync(device):
    if device == "cuda": torch.cuda.synchronize()


def time_pair(ours, theirs, x, t, ctx, rounds, device="cpu"):
    with torch.no_grad():
        a, b = run(theirs, x, t, ctx, False), run(ours, x, t, ctx, True)      # warm-up (and correctness)
        diff = (a.float() - b.float()).abs().max().item()
        to, td = [], []
        for r in range(rounds):
            for model, is_ours, acc in ((theirs, False, td), (ours, True, to)) if r % 2 == 0 else \
                                       ((ours, True, to), (theirs, False, td)):
                sync(device); t0 = time.perf_counter()
                run(model, x, t, ctx, is_ours)
                sync(device); acc.append(time.perf_counter() - t0)
    return to, td, diff


# ---------------------------------------------------------------------------------------------- memory (children)
CHILD = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
def status(key): return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) / 1024
from sd_from_scratch.unet import UNet2DConditionModel, SD15_UNET_CONFIG
if {ours}:
    with torch.device('meta'): m = UNet2DConditionModel(SD15_UNET_CONFIG)
else:
    from diffusers import UNet2DConditionModel as D
    with torch.device('meta'): m = D(**SD15_UNET_CONFIG)
m = m.to_empty(device='cpu').eval()
torch.manual_seed(0)
with torch.no_grad():
    for p in m.parameters(): p.normal_(0, 0.02)
if {ours} and {fuse}: m.fuse_qkv_projections()
g = torch.Generator().manual_seed(0)
x, ctx = torch.randn({batch}, 4, {size}, {size}, generator=g), torch.randn({batch}, 77, 768, generator=g)
def fwd():
    with torch.no_grad():
        out = m(x, 500, ctx)
        return out if torch.is_tensor(out) else out.sample
fwd()                                            # warm-up: thread pools, kernels, first-touch
open('/proc/self/clear_refs', 'w').write('5')    # reset the peak-RSS counter (VmHWM) to the current RSS
before = status('VmRSS')
out = fwd()
print(json.dumps(dict(extra=status('VmHWM') - before, peak=status('VmHWM'), weights=sum(p.numel() for p in m.parameters()) * 4 / 2**20)))
"""


def peak_memory(is_ours, threads, batch, size, fuse=False):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    code = CHILD.format(root=str(ROOT), threads=threads, ours=is_ours, batch=batch, size=size, fuse=fuse)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode: raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--fuse-qkv", action="store_true", help="our UNet with fused q/k/v projections (one matmul per attention)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"SD v1.5 UNet, batch {args.batch}×4×{args.size}×{args.size}, context {args.batch}×77×768, fp32 CPU, "
          f"{args.threads} threads, torch {torch.__version__}" + (", ours with fused q/k/v" if args.fuse_qkv else ""))

    ours, theirs = build_pair()
    if args.fuse_qkv: ours.fuse_qkv_projections()
    x, t, ctx = make_inputs(args.batch, args.size)
    to, td, diff = time_pair(ours, theirs, x, t, ctx, args.rounds)
    del ours, theirs
    ratios = [a / b for a, b in zip(to, td)]
    print(f"max |Δε| = {diff:.2e}")
    print(f"time  diffusers best {min(td):7.2f} s   ours best {min(to):7.2f} s   "
          f"ratio ours/diffusers = {min(to) / min(td):.3f}   (median per-round ratio {statistics.median(ratios):.3f})")
    print(f"      all rounds: diffusers {[round(v, 2) for v in td]}  ours {[round(v, 2) for v in to]}")

    if not args.no_memory:
        mo = peak_memory(True, args.threads, args.batch, args.size, args.fuse_qkv)
        md = peak_memory(False, args.threads, args.batch, args.size)
        print(f"peak memory (separate child processes, VmHWM reset before the forward; weights {mo['weights']:.0f} MiB):")
        print(f"      extra during forward: diffusers {md['extra']:7.1f} MiB   ours {mo['extra']:7.1f} MiB   "
              f"ratio ours/diffusers = {mo['extra'] / md['extra']:.3f}")
        print(f"      whole-process peak:   diffusers {md['peak']:7.1f} MiB   ours {mo['peak']:7.1f} MiB   "
              f"ratio ours/diffusers = {mo['peak'] / md['peak']:.3f}")

    if args.no_cuda or not torch.cuda.is_available():
        print("CUDA not available: fp16 GPU comparison skipped" if not args.no_cuda else "CUDA comparison disabled")
        return
    ours, theirs = build_pair("cuda", torch.float16)
    if args.fuse_qkv: ours.fuse_qkv_projections()
    x, t, ctx = make_inputs(args.batch, args.size, "cuda", torch.float16)
    to, td, diff = time_pair(ours, theirs, x, t, ctx, max(args.rounds, 10), "cuda")
    print(f"fp16 CUDA ({torch.cuda.get_device_name()}): max |Δε| = {diff:.2e}; time diffusers {min(td) * 1e3:.1f} ms, "
          f"ours {min(to) * 1e3:.1f} ms, ratio {min(to) / min(td):.3f}")
    peaks = {}
    with torch.no_grad():
        for name, model, is_ours in (("diffusers", theirs, False), ("ours", ours, True)):
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
            run(model, x, t, ctx, is_ours); torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(f"fp16 CUDA extra memory during forward: diffusers {peaks['diffusers']:.0f} MiB, ours {peaks['ours']:.0f} MiB, "
          f"ratio {peaks['ours'] / peaks['diffusers']:.3f}")


if __name__ == "__main__":
    main()
