"""GPU speed: SD v1.5 UNet denoising loop, fp16, 512² (64×64 latents), batch 1 with CFG (UNet batch 2), 50 steps.

Ours vs diffusers' UNet2DConditionModel (eager, SDPA attention) on the same random weights and inputs, in one process:
it/s (one "it" = one denoising step = one UNet call on the CFG batch) and peak CUDA memory, printed as ratios.
Our options: --compile (torch.compile, mode max-autotune-no-cudagraphs or reduce-overhead for CUDA graphs),
--channels-last, --fuse-qkv. Needs CUDA: on a CPU-only machine it says so and exits cleanly.

    python bench/gpu.py [--steps 50] [--compile] [--channels-last] [--fuse-qkv] [--cuda-graphs]
"""
import argparse, sys, time

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
                 layers_per_block=2, attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32,
                 down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                 flip_sin_to_cos=True, freq_shift=0, act_fn="silu", center_input_sample=False)


def time_loop(fn, steps, x, ctx, ts):
    import torch
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for t in ts[:steps]: fn(x, t, ctx)
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0), (torch.cuda.max_memory_allocated() - base) / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--compile", action="store_true", help="torch.compile our UNet")
    ap.add_argument("--cuda-graphs", action="store_true", help="with --compile: mode='reduce-overhead' (CUDA graphs)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--fuse-qkv", action="store_true", help="fuse q/k/v projections of self-attention (if our UNet offers it)")
    a = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here); nothing to measure. "
              "On CPU, see bench/unet.py and bench/pipeline.py.")
        return 0
    from diffusers import UNet2DConditionModel as Theirs
    from sd_from_scratch.unet import UNet2DConditionModel as Ours
    dev, dt = "cuda", torch.float16
    torch.manual_seed(0)
    theirs = Theirs(**SD15_UNET).to(dev, dt).eval()
    ours = Ours.from_config(dict(theirs.config)).to(dev, dt).eval()
    ours.load_state_dict(theirs.state_dict())
    if a.channels_last: ours = ours.to(memory_format=torch.channels_last)
    if a.fuse_qkv:
        if hasattr(ours, "fuse_qkv_projections"): ours.fuse_qkv_projections()
        else: print("our UNet has no fuse_qkv_projections(); --fuse-qkv ignored")
    g = torch.Generator(dev).manual_seed(0)
    x = torch.randn(2, 4, 64, 64, device=dev, dtype=dt, generator=g)
    ctx = torch.randn(2, 77, 768, device=dev, dtype=dt, generator=g)
    ts = [torch.tensor(t, device=dev) for t in range(981, 0, -20)] * 4
    ref_fn = lambda x, t, c: theirs(x, t, encoder_hidden_states=c).sample
    our_model = ours
    if a.compile:
        our_model = torch.compile(ours, mode="reduce-overhead" if a.cuda_graphs else "max-autotune-no-cudagraphs", fullgraph=False)
    our_fn = lambda x, t, c: our_model(x, t, c)
    with torch.inference_mode():
        d = (ref_fn(x, ts[0], ctx).float() - our_fn(x, ts[0], ctx).float()).abs().max().item()
    print(f"fp16 max |Δ| ε ours vs diffusers: {d:.3g}")
    for _ in range(3): time_loop(our_fn, 5, x, ctx, ts); time_loop(ref_fn, 5, x, ctx, ts)   # warm-up (and compile)
    r_its, r_mem = time_loop(ref_fn, a.steps, x, ctx, ts)
    o_its, o_mem = time_loop(our_fn, a.steps, x, ctx, ts)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  SD v1.5 UNet fp16 64×64 latents, CFG batch 2, {a.steps} steps")
    print(f"diffusers eager SDPA: {r_its:6.2f} it/s  peak {r_mem:8.0f} MiB")
    print(f"ours                : {o_its:6.2f} it/s  peak {o_mem:8.0f} MiB   "
          f"(compile={a.compile}, cuda_graphs={a.cuda_graphs}, channels_last={a.channels_last}, fuse_qkv={a.fuse_qkv})")
    print(f"ratio ours/diffusers: speed {o_its / r_its:.2f}×   peak memory {o_mem / r_mem:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
