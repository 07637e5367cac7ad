"""Every GPU measurement in one call (at most 8 minutes on an H200): SD v1.5-sized UNet and VAE (random weights), fp16.

1. Correctness on the device: ours vs diffusers on the same weights and noise, max |Δ| on ε (one UNet call on the CFG
   batch) and on a 512² image (DDIM with CFG 7.5, then the VAE decode), next to diffusers fp16 vs diffusers fp32 (the
   size of fp16 rounding itself).
2. Speed and memory of a 50-step loop (one step = one UNet call on the CFG batch 2×4×64×64) for diffusers eager SDPA,
   ours eager, ours + channels_last + fused QKV, + torch.compile, + CUDA graphs. Each variant runs in its own child
   process (its own peak memory; a compile that runs past the time budget is killed, and the rows measured so far
   are kept). The table is printed last and written to $OUT (or --out) as gpu_all.md and gpu_all.json, after every row.

    bash bench/gpu_all.sh [--out DIR] [--budget 420] [--steps 50] [--compile-mode default]   # GPU machine
    bash bench/gpu_all.sh --dry-run [--out DIR]       # CPU, tiny config: the same code path minus CUDA-only options

The helpers (weights, inputs, fast-path options, the timed loop) live in bench/gpu.py."""
import argparse, json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import make_inputs, make_unets, prepare, sync, time_loop   # noqa: E402

VARIANTS = {   # key → (label, options for gpu.prepare); each builds on the previous one
    "diffusers": ("diffusers eager SDPA", None),
    "ours": ("ours eager", {}),
    "ours_cl_fused": ("ours + channels_last + fused QKV", dict(channels_last=True, fuse_qkv=True)),
    "ours_compile": ("ours + cl + fused + torch.compile", dict(channels_last=True, fuse_qkv=True, compile=True)),
    "ours_compile_cg": ("ours + cl + fused + compile + CUDA graphs",
                        dict(channels_last=True, fuse_qkv=True, compile=True, cuda_graphs=True)),
}
CUDA_ONLY = {"ours_compile_cg"}
GUIDANCE = 7.5
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                block_out_channels=[8, 16, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, sample_size=128)


def settings(dry_run: bool, steps: int | None = None, compile_mode: str | None = None) -> dict:
    "What to run: SD v1.5 sizes in fp16 on CUDA, or (dry run) tiny configs in fp32 on the CPU with the 'eager' compile backend."
    from sd_from_scratch.unet import SD15_UNET_CONFIG, tiny_unet_config
    from sd_from_scratch.vae import SD_VAE_CONFIG
    if dry_run:
        S = dict(device="cpu", dtype="float32", unet=tiny_unet_config(), vae=TINY_VAE, size=16, steps=3, repeats=1,
                 warmup=2, image_steps=2, backend="eager", mode=None, tol=1e-4)
    else:
        S = dict(device="cuda", dtype="float16", unet=dict(SD15_UNET_CONFIG),
                 vae={k: v for k, v in SD_VAE_CONFIG.items() if not k.startswith("_")}, size=64, steps=50, repeats=3,
                 warmup=5, image_steps=20, backend="inductor", mode=compile_mode, tol=None)
    if steps: S["steps"] = steps
    return S


def env_info(S) -> dict:
    import platform, torch
    info = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), python=platform.python_version(),
                torch=torch.__version__, cuda=torch.version.cuda, device=S["device"], dtype=S["dtype"])
    for mod in ("diffusers", "transformers"):
        try: info[mod] = __import__(mod).__version__
        except Exception as e: info[mod] = f"missing ({type(e).__name__})"
    if S["device"] == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            info["driver"] = q.stdout.strip().splitlines()[0]
        except Exception: info["driver"] = "?"
    else:
        info["gpu"] = f"none (dry run on the CPU, torch threads: {torch.get_num_threads()})"
    return info


# ---- 1. correctness on the device (parent process)

def check_parity(S, work: Path) -> dict:
    "ε and a full image, ours vs diffusers (and diffusers in fp32: the fp16 rounding floor); saves weights + inputs to `work`."
    import copy, torch
    from diffusers import AutoencoderKL as TheirVAE, DDIMScheduler
    from safetensors.torch import save_file
    from sd_from_scratch.samplers import SD_V1_SCHEDULER_CONFIG, sample
    from sd_from_scratch.vae import AutoencoderKL as OurVAE
    dev, dt = torch.device(S["device"]), getattr(torch, S["dtype"])
    theirs, ours = make_unets(S["unet"], dev, dt)
    ref32 = copy.deepcopy(theirs).float()                               # the same (rounded) weights in fp32
    torch.manual_seed(1)
    with torch.device(dev): tvae = TheirVAE(**S["vae"])
    tvae = tvae.to(dt).eval()
    with torch.device("meta"): ovae = OurVAE(**S["vae"])
    ovae.load_state_dict({k: v.clone() for k, v in tvae.state_dict().items()}, assign=True)
    ovae = ovae.eval()
    tvae32 = copy.deepcopy(tvae).float()
    x, ctx, ts = make_inputs(S["unet"]["cross_attention_dim"], dev, dt, size=S["size"])
    g = torch.Generator("cpu").manual_seed(2)
    noise = torch.randn(1, 4, S["size"], S["size"], generator=g).to(dev, dt)
    sched = {k: v for k, v in SD_V1_SCHEDULER_CONFIG.items() if not k.startswith("_")}

    def cfg(call):                                                      # classifier-free guidance on the batch [uncond, cond]
        def eps(z, t):
            u, c = call(torch.cat([z, z]), t).chunk(2)
            return u + GUIDANCE * (c - u)
        return eps

    def diffusers_image(unet, vae, c):
        s = DDIMScheduler.from_config(sched)
        s.set_timesteps(S["image_steps"])
        z = noise.to(c.dtype) * s.init_noise_sigma
        eps = cfg(lambda z, t: unet(z, t, encoder_hidden_states=c).sample)
        for t in s.timesteps: z = s.step(eps(s.scale_model_input(z, t), t), t, z).prev_sample
        return z, (vae.decode(z / 0.18215).sample / 2 + 0.5).clamp(0, 1)

    with torch.inference_mode():
        e_t, e_o = theirs(x, ts[0], encoder_hidden_states=ctx).sample, ours(x, ts[0], ctx)
        e_32 = ref32(x.float(), ts[0], encoder_hidden_states=ctx.float()).sample
        z_t, img_t = diffusers_image(theirs, tvae, ctx)
        z_32, img_32 = diffusers_image(ref32, tvae32, ctx.float())
        z_o = sample(cfg(lambda z, t: ours(z, t, ctx)), noise, "ddim", S["image_steps"], config=sched)
        img_o = (ovae.decode(z_o / 0.18215) / 2 + 0.5).clamp(0, 1)
    d = lambda a, b: (a.float() - b.float()).abs().max().item()
    r = dict(eps_ours_vs_diffusers=d(e_o, e_t), eps_diffusers_fp16_vs_fp32=d(e_t, e_32), eps_ours_vs_fp32=d(e_o, e_32),
             eps_max_abs=e_32.abs().max().item(),
             latents_ours_vs_diffusers=d(z_o, z_t), latents_diffusers_fp16_vs_fp32=d(z_t, z_32),
             image_ours_vs_diffusers=d(img_o, img_t), image_diffusers_fp16_vs_fp32=d(img_t, img_32),
             image_ours_vs_fp32=d(img_o, img_32), image_size=list(img_o.shape[-2:]), image_steps=S["image_steps"],
             finite=bool(torch.isfinite(img_o).all() and torch.isfinite(e_o).all()))
    if S["tol"]:                                                        # fp32: the same numbers, to rounding
        ok = r["eps_ours_vs_diffusers"] <= S["tol"] and r["image_ours_vs_diffusers"] <= S["tol"]
    else:                                                               # fp16: ours is as close to fp32 as diffusers is
        ok = all(r[f"{k}_ours_vs_fp32"] <= 2 * r[f"{k}_diffusers_fp16_vs_fp32"] + 1e-3 for k in ("eps", "image"))
    r["ok"] = bool(r["finite"] and ok)
    theirs.save_pretrained(work / "unet")
    save_file({"x": x.contiguous(), "ctx": ctx.contiguous(), "ts": torch.stack(ts), "eps": e_t.contiguous(),
               "eps32": e_32.contiguous()}, str(work / "inputs.safetensors"))
    return r


# ---- 2. one variant, in a child process

def measure(S, key: str, work: Path) -> dict:
    import torch
    from safetensors.torch import load_file
    dev, dt = torch.device(S["device"]), getattr(torch, S["dtype"])
    label, opts = VARIANTS[key]
    inp = load_file(str(work / "inputs.safetensors"), device=str(dev))
    x, ctx, ts = inp["x"], inp["ctx"], list(inp["ts"].unbind())
    if opts is None:
        from diffusers import UNet2DConditionModel as Theirs
        m = Theirs.from_pretrained(work / "unet", torch_dtype=dt).to(dev).eval()
        fn = lambda x, t, c: m(x, t, encoder_hidden_states=c).sample
    else:
        from sd_from_scratch.unet import UNet2DConditionModel as Ours
        m = Ours.from_pretrained(work / "unet", dtype=dt, device=dev)
        fn = prepare(m, **opts, mode=S["mode"], backend=S["backend"])
    note = []
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            e = fn(x, ts[0], ctx).clone()                               # the first call compiles (with compile=True)
    except Exception as ex:                                             # fullgraph=True refused a graph break: say so, go on
        if not (opts and opts.get("compile")): raise
        note.append(f"fullgraph=True failed ({type(ex).__name__}: {str(ex).strip().splitlines()[0][:150]}); ran fullgraph=False")
        torch._dynamo.reset()
        fn = prepare(m, **opts, mode=S["mode"], backend=S["backend"], fullgraph=False)
        with torch.inference_mode(): e = fn(x, ts[0], ctx).clone()
    sync(dev)
    first_s = time.perf_counter() - t0
    with torch.inference_mode():
        for i in range(S["warmup"]): fn(x, ts[i], ctx)                  # CUDA graphs: warm-up, record, replay
    runs = [time_loop(fn, S["steps"], x, ctx, ts) for _ in range(S["repeats"])]
    best = max(runs, key=lambda r: r["its"])
    peak = lambda k: max(r[k] for r in runs) if best[k] is not None else None
    if opts and opts.get("compile") and S["backend"] != "inductor": note.append(f"compile backend {S['backend']!r}")
    return dict(key=key, label=label, its=best["its"], peak_mib=peak("peak_mib"), reserved_mib=peak("reserved_mib"),
                d_eps=(e.float() - inp["eps"].float()).abs().max().item(),
                d_eps32=(e.float() - inp["eps32"].float()).abs().max().item(), first_call_s=first_s,
                steps=S["steps"], repeats=S["repeats"], status="ok", note="; ".join(note))


def run_child(key: str, a, S, work: Path, seconds: float) -> dict:
    "Run `measure` for one variant in a fresh process group; kill it (and its compile workers) after `seconds`."
    label = VARIANTS[key][0]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", key, "--work", str(work), "--steps", str(S["steps"])]
    if a.dry_run: cmd.append("--dry-run")
    if a.compile_mode: cmd += ["--compile-mode", a.compile_mode]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); p.communicate()
        return dict(key=key, label=label, status="timeout", note=f"killed after {seconds:.0f} s (time budget; compile too slow?)")
    wall = time.monotonic() - t0
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "): return {**json.loads(line[7:]), "wall_s": wall}
    tail = " | ".join(l for l in out.strip().splitlines()[-3:])
    print(out[-4000:], file=sys.stderr)
    return dict(key=key, label=label, status="error", note=f"exit {p.returncode}: {tail[-300:]}", wall_s=wall)


# ---- the table

def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def table(report) -> str:
    info, par, rows = report["info"], report.get("parity"), report["rows"]
    ref = next((r for r in rows if r["key"] == "diffusers" and r.get("status") == "ok"), None)
    lines = [f"# bench/gpu_all.py — {info['date']}{'  (DRY RUN: tiny config, CPU)' if report['dry_run'] else ''}", "",
             f"GPU: {info['gpu']}  driver {info.get('driver', '–')}  torch {info['torch']} (CUDA {info['cuda']})  "
             f"diffusers {info['diffusers']}  transformers {info['transformers']}  Python {info['python']}", "",
             f"UNet {report['what']}", ""]
    if par:
        lines += [f"Parity ({info['dtype']}, same weights and noise): max |Δε| ours vs diffusers "
                  f"{par['eps_ours_vs_diffusers']:.3g} (|ε| ≤ {par['eps_max_abs']:.2f}); vs diffusers in fp32: ours "
                  f"{par['eps_ours_vs_fp32']:.3g}, diffusers {par['eps_diffusers_fp16_vs_fp32']:.3g}. "
                  f"{par['image_size'][0]}×{par['image_size'][1]} image after {par['image_steps']} DDIM steps with CFG "
                  f"{GUIDANCE}: max |Δ| ours vs diffusers {par['image_ours_vs_diffusers']:.3g}; vs fp32: ours "
                  f"{par['image_ours_vs_fp32']:.3g}, diffusers {par['image_diffusers_fp16_vs_fp32']:.3g} "
                  f"(latents {par['latents_ours_vs_diffusers']:.3g}) → {'OK' if par['ok'] else 'MISMATCH'}", ""]
    lines += ["| variant | it/s | × diffusers | peak alloc MiB | × diffusers | peak reserved MiB | max \\|Δε\\| vs diffusers | "
              "first call s | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = r.get("status") == "ok"
        sp = fmt(r["its"] / ref["its"], ".2f") if ok and ref else "–"
        mem = fmt(r["peak_mib"] / ref["peak_mib"], ".2f") if ok and ref and r.get("peak_mib") and ref.get("peak_mib") else "–"
        status = r["status"] + (f": {r['note']}" if r.get("note") else "")
        lines.append(f"| {r['label']} | {fmt(r.get('its'), '.2f')} | {sp} | {fmt(r.get('peak_mib'), '.0f')} | {mem} | "
                     f"{fmt(r.get('reserved_mib'), '.0f')} | {fmt(r.get('d_eps'), '.3g')} | {fmt(r.get('first_call_s'), '.1f')} | "
                     f"{status} |")
    good = [r for r in rows if r.get("status") == "ok" and r["key"] != "diffusers"]
    if ref and good:
        b = max(good, key=lambda r: r["its"])
        m = f", memory {b['peak_mib'] / ref['peak_mib']:.2f}×" if b.get("peak_mib") and ref.get("peak_mib") else ""
        lines += ["", f"Fastest of ours: {b['label']}: {b['its'] / ref['its']:.2f}× diffusers' it/s{m} "
                      f"(target: ≥ 2× with ≤ 1× memory). Elapsed {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget."]
    return "\n".join(lines) + "\n"


def write(report, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_all.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_all.md").write_text(table(report))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny config on the CPU, fp32, compile backend 'eager', no CUDA graphs")
    ap.add_argument("--out", help="folder for gpu_all.md / gpu_all.json (default: $OUT, else outputs/gpu_all)")
    ap.add_argument("--budget", type=float, default=420, help="seconds for everything (counted from $SDFS_T0 when set)")
    ap.add_argument("--steps", type=int, help="timed steps per run (default 50; dry run 3)")
    ap.add_argument("--compile-mode", help="torch.compile mode for the compile row (default: inductor's default)")
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)   # internal: one child measurement
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    import torch
    S = settings(a.dry_run, a.steps, a.compile_mode)
    if a.dry_run: torch.set_num_threads(1)
    if a.variant:
        print("RESULT " + json.dumps(measure(S, a.variant, Path(a.work))), flush=True)
        return 0
    if not a.dry_run and not torch.cuda.is_available():
        print("bench/gpu_all.py needs a CUDA GPU (torch.cuda.is_available() is False here); "
              "`bash bench/gpu_all.sh --dry-run` runs the same code path on the CPU with a tiny config.")
        return 0
    t_start = float(os.environ.get("SDFS_T0") or time.time())
    deadline = t_start + a.budget
    out = Path(a.out or os.environ.get("OUT") or "outputs/gpu_all")
    size = S["size"]
    report = dict(dry_run=a.dry_run, budget_s=a.budget, elapsed_s=0.0, info=env_info(S), parity=None, rows=[],
                  what=f"{'tiny' if a.dry_run else 'SD v1.5'} config, {S['dtype']}, latents 2×4×{size}×{size} (CFG batch), "
                       f"{S['steps']} steps per run, best of {S['repeats']}; compile: dynamic=False, fullgraph=True, "
                       f"backend {S['backend']!r}, mode {S['mode'] or 'default'!r}")

    def on_term(*_): raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        with tempfile.TemporaryDirectory(prefix="sdfs-gpu-") as work:
            work = Path(work)
            report["parity"] = check_parity(S, work)
            if S["device"] == "cuda": torch.cuda.empty_cache()
            report["elapsed_s"] = time.time() - t_start; write(report, out)
            print(table(report).split("| variant")[0], flush=True)
            for key in VARIANTS:
                label = VARIANTS[key][0]
                left = deadline - time.time() - 3
                if key in CUDA_ONLY and S["device"] != "cuda":
                    row = dict(key=key, label=label, status="skipped", note="CUDA only")
                elif left < 20:
                    row = dict(key=key, label=label, status="skipped", note="out of time budget")
                else:
                    row = run_child(key, a, S, work, left)
                report["rows"].append(row)
                report["elapsed_s"] = time.time() - t_start
                write(report, out)
                print(f"{label}: {row['status']}" + (f"  {row['its']:.2f} it/s" if row.get("its") else "")
                      + (f"  ({row['note']})" if row.get("note") else ""), flush=True)
    except KeyboardInterrupt:
        report["interrupted"] = True
        print("interrupted: the table below has what was measured so far", file=sys.stderr)
    finally:
        report["elapsed_s"] = time.time() - t_start
        write(report, out)
        print("\n" + table(report), flush=True)
        print(f"written: {out / 'gpu_all.md'}, {out / 'gpu_all.json'}")
    par = report["parity"]
    return 0 if par and par["ok"] and all(r["status"] in ("ok", "skipped", "timeout") for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
