"""GPU speed: SD v1.5 UNet denoising loop, fp16, 512² (64×64 latents), batch 1 with CFG (UNet batch 2), 50 steps.

Ours vs diffusers' UNet2DConditionModel (eager, SDPA attention) on the same random weights and inputs, in one process:
it/s (one "it" = one denoising step = one UNet call on the CFG batch) and peak CUDA memory, printed as ratios.
Our options: --compile (torch.compile, static shapes, full graph; --cuda-graphs for mode reduce-overhead),
--channels-last, --fuse-qkv. Needs CUDA: on a CPU-only machine it says so and exits cleanly.
`bench/gpu_all.sh` runs every variant in one call and writes a table; the helpers below are shared with it.

    python bench/gpu.py [--steps 50] [--compile] [--channels-last] [--fuse-qkv] [--cuda-graphs]
"""
import argparse, sys, time


def sync(device):
    import torch
    if torch.device(device).type == "cuda": torch.cuda.synchronize()


def make_inputs(ctx_dim: int, device, dtype, batch: int = 2, size: int = 64, channels: int = 4, seed: int = 0):
    "Latents B×4×size×size, text context B×77×ctx_dim (standard normal) and 200 timesteps (981, 961, …, 1) × 4 as 0-d tensors."
    import torch
    g = torch.Generator("cpu").manual_seed(seed)                   # drawn on the CPU: the same numbers on every device
    x = torch.randn(batch, channels, size, size, generator=g).to(device, dtype)
    ctx = torch.randn(batch, 77, ctx_dim, generator=g).to(device, dtype)
    ts = torch.arange(981, 0, -20, device=device).repeat(4)         # one 0-d tensor per step: static shapes
    return x, ctx, list(ts.unbind())


def make_unets(config: dict, device, dtype, seed: int = 0):
    "diffusers' UNet2DConditionModel with seeded random weights, and ours loaded with the same weights (both eval)."
    import torch
    from diffusers import UNet2DConditionModel as Theirs
    from sd_from_scratch.unet import UNet2DConditionModel as Ours
    torch.manual_seed(seed)
    with torch.device(device): theirs = Theirs(**config)
    theirs = theirs.to(dtype).eval()
    ours = Ours.from_config(dict(theirs.config), device="meta")
    ours.load_state_dict({k: v.clone() for k, v in theirs.state_dict().items()}, assign=True)   # own copy
    return theirs, ours.eval()


def prepare(ours, channels_last: bool = False, fuse_qkv: bool = False, compile: bool = False, cuda_graphs: bool = False,
            mode: str | None = None, backend: str = "inductor", fullgraph: bool = True):
    """Our UNet with the fast-path options → a callable fn(x, t, ctx) → ε.
    compile: torch.compile with static shapes (dynamic=False) and `fullgraph` (True: any graph break is an error);
    cuda_graphs: mode 'reduce-overhead' (CUDA graphs, so outputs are cloned before the next replay overwrites them)."""
    import torch
    if channels_last: ours = ours.to(memory_format=torch.channels_last)
    if fuse_qkv: ours.fuse_qkv_projections()
    model = ours
    if compile:
        mode = "reduce-overhead" if cuda_graphs else mode
        model = torch.compile(ours, mode=mode, backend=backend, dynamic=False, fullgraph=fullgraph)
    def fn(x, t, c):
        if cuda_graphs: torch.compiler.cudagraph_mark_step_begin()   # a new step: the last replay's outputs may be reused
        return model(x.contiguous(memory_format=torch.channels_last) if channels_last else x, t, c)
    return fn


def time_loop(fn, steps, x, ctx, ts):
    """`steps` denoising steps (one fn call each) → dict(its, peak_mib, extra_mib, reserved_mib). Memory (CUDA only):
    peak allocated during the loop (everything alive, weights included), its excess over the start, peak reserved."""
    import torch
    cuda = x.device.type == "cuda"
    sync(x.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for t in ts[:steps]: fn(x, t, ctx)
    sync(x.device)
    r = dict(its=steps / (time.perf_counter() - t0), peak_mib=None, extra_mib=None, reserved_mib=None)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        r.update(peak_mib=peak / 2**20, extra_mib=(peak - base) / 2**20, reserved_mib=torch.cuda.max_memory_reserved() / 2**20)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--compile", action="store_true", help="torch.compile our UNet")
    ap.add_argument("--cuda-graphs", action="store_true", help="with --compile: mode='reduce-overhead' (CUDA graphs)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--fuse-qkv", action="store_true", help="fuse q/k/v projections of self-attention (k/v of cross-attention)")
    a = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here); nothing to measure. "
              "On CPU, see bench/unet.py and bench/pipeline.py; `bash bench/gpu_all.sh --dry-run` tries the GPU script here.")
        return 0
    from sd_from_scratch.unet import SD15_UNET_CONFIG
    dev, dt = "cuda", torch.float16
    theirs, ours = make_unets(SD15_UNET_CONFIG, dev, dt)
    x, ctx, ts = make_inputs(768, dev, dt)
    ref_fn = lambda x, t, c: theirs(x, t, encoder_hidden_states=c).sample
    our_fn = prepare(ours, a.channels_last, a.fuse_qkv, a.compile, a.cuda_graphs, mode="max-autotune-no-cudagraphs")
    with torch.inference_mode():
        d = (ref_fn(x, ts[0], ctx).float() - our_fn(x, ts[0], ctx).float()).abs().max().item()
    print(f"fp16 max |Δ| ε ours vs diffusers: {d:.3g}")
    for _ in range(3): time_loop(our_fn, 5, x, ctx, ts); time_loop(ref_fn, 5, x, ctx, ts)   # warm-up (and compile)
    r, o = time_loop(ref_fn, a.steps, x, ctx, ts), time_loop(our_fn, a.steps, x, ctx, ts)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  SD v1.5 UNet fp16 64×64 latents, CFG batch 2, {a.steps} steps")
    print(f"diffusers eager SDPA: {r['its']:6.2f} it/s  extra {r['extra_mib']:8.0f} MiB")
    print(f"ours                : {o['its']:6.2f} it/s  extra {o['extra_mib']:8.0f} MiB   "
          f"(compile={a.compile}, cuda_graphs={a.cuda_graphs}, channels_last={a.channels_last}, fuse_qkv={a.fuse_qkv})")
    print(f"ratio ours/diffusers: speed {o['its'] / r['its']:.2f}×   extra memory {o['extra_mib'] / r['extra_mib']:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
