"""Fast sampling on CPU, ours vs diffusers, in one process and interleaved:
  ours fp32                          vs diffusers fp32 (the defaults)
  ours bf16 + DeepCache(3, 0)        vs diffusers bf16 + the `deepcache` package (DeepCacheSDHelper, interval 3, branch 0)
  ours bf16 + enable_fast_sampling() (the recommended setting: DeepCache + guidance interval)
on an SD v1.5-sized pipeline (random weights, saved by diffusers with save_pretrained, loaded by both) and on the
shipped toy model. Same prompt, seed, sampler (DPM++ 2M), steps and threads. Each round runs every configuration
once (interleaved, so background load hits all alike); we report the median wall time of the rounds and ratios.
usage: python bench/fast.py [--size 256] [--steps 10] [--rounds 3] [--threads 2] [--skip-sd15] [--skip-toy]"""
import argparse, json, resource, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fixtures import write_clip_tokenizer                               # noqa: E402
import sd_from_scratch.fast                                              # noqa: E402,F401  (enable_deepcache, enable_fast_sampling)
from sd_from_scratch.pipeline import StableDiffusion                     # noqa: E402
from sd_from_scratch.loading import SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_CONFIG, SD15_SCHEDULER_CONFIG  # noqa: E402
from diffusers.utils import logging as dlogging                          # noqa: E402

dlogging.set_verbosity_error()
warnings.simplefilter("ignore")
ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=256); ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--rounds", type=int, default=3); ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--fp32-rounds", type=int, default=None, help="rounds of the (slow) fp32 pair; default --rounds")
ap.add_argument("--toy-rounds", type=int, default=7)
ap.add_argument("--skip-fp32", action="store_true", help="only the bf16 configurations (the fp32 pair is the slow part)")
ap.add_argument("--no-context", action="store_true", help="skip the plain-bf16 context runs")
ap.add_argument("--no-same-work", action="store_true", help="skip ours bf16 + DeepCache(3, 0) (the same work as diffusers')")
ap.add_argument("--skip-sd15", action="store_true"); ap.add_argument("--skip-toy", action="store_true")
ap.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "sdfs_bench_sd15_random"))
ap.add_argument("--json", default=None, help="also write the results here")
args = ap.parse_args()
torch.set_num_threads(args.threads)
PROMPT, SEED = "a red 7 on a blue background", 0
results = {}


def build_sd15(folder: Path) -> Path:
    "SD v1.5-sized pipeline with seeded random weights, written by diffusers' save_pretrained (once; reused)."
    if (folder / "model_index.json").exists(): return folder
    from diffusers import AutoencoderKL, UNet2DConditionModel, DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}
    torch.manual_seed(0); unet = UNet2DConditionModel(**strip(SD15_UNET_CONFIG))
    torch.manual_seed(1); vae = AutoencoderKL(**strip(SD15_VAE_CONFIG))
    torch.manual_seed(2); te = CLIPTextModel(CLIPTextConfig(**{**SD15_TEXT_CONFIG, "bos_token_id": 49406, "eos_token_id": 49407,
                                                               "pad_token_id": 49407}))
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "_tok"))
    sch = DPMSolverMultistepScheduler.from_config(SD15_SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sch, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    import shutil
    for f in ("vocab.json", "merges.txt"): shutil.copy(folder / "_tok" / f, folder / "tokenizer" / f)
    shutil.rmtree(folder / "_tok", ignore_errors=True)
    return folder


def share(ref_module, ours_module):
    "Point the diffusers module's parameters at ours (same names, same values): one copy of the weights in memory."
    want = set(ref_module.state_dict())
    sd = {k if k in want else k.removeprefix("text_model."): v for k, v in ours_module.state_dict().items()}
    ref_module.load_state_dict(sd, strict=True, assign=True)


def cpu_s():
    "CPU seconds this process has used (all threads): on a shared, overloaded machine it drifts far less than wall time."
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime


CPU = {}                                                                 # configuration → CPU seconds of each run


def timed(fn, key=None):
    t, c = time.perf_counter(), cpu_s(); out = fn(); dt = time.perf_counter() - t
    if key is not None: CPU.setdefault(key, []).append(cpu_s() - c)
    return dt, out


def bench(name, folder, size, steps, rounds, sd15, fp32_rounds=None):
    from diffusers import StableDiffusionPipeline, DPMSolverMultistepScheduler
    from DeepCache import DeepCacheSDHelper
    ours = StableDiffusion.from_pretrained(folder); ours.progress = False
    ref = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    ref.scheduler = DPMSolverMultistepScheduler.from_config(ours.scheduler_config)
    ref.set_progress_bar_config(disable=True)
    for c in ("unet", "vae", "text_encoder"): share(getattr(ref, c), getattr(ours, c))
    hw = dict(height=size, width=size)

    def run_ours():
        return ours(PROMPT, steps=steps, sampler="dpmpp_2m", seed=SEED, output_type="np", **hw)

    def run_ref():
        return ref(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(SEED), output_type="np", **hw).images

    helper = DeepCacheSDHelper(pipe=ref); helper.set_params(cache_interval=3, cache_branch_id=0)
    def run_ref_dc():
        helper.enable()
        try: return run_ref()
        finally: helper.disable()

    def run_ours_dc():
        ours.enable_deepcache(3, 0)
        try: return run_ours()
        finally: ours.disable_deepcache()

    def run_ours_fast():
        ours.enable_fast_sampling()
        try: return run_ours()
        finally: ours.disable_fast_sampling()

    rows = {}
    with torch.inference_mode():
        # fp32: the defaults (the timed runs' images give the parity numbers: no separate warm-up run)
        t, out = {"ours fp32": [], "diffusers fp32": []}, {}
        for _ in range(0 if args.skip_fp32 else (fp32_rounds or rounds)):
            for k, fn in (("ours fp32", run_ours), ("diffusers fp32", run_ref)):
                dt, out[k] = timed(fn, k); t[k].append(dt)
        fp32_delta = float(np.abs(out["ours fp32"] - out["diffusers fp32"]).max()) if out else float("nan")
        rows.update(t)
        # bf16: ours keeps its VAE in fp32 unless fast sampling decodes in bf16; diffusers casts everything
        ours.to(dtype=torch.bfloat16); ref.to(torch.bfloat16)
        for c in ("unet", "text_encoder"): share(getattr(ref, c), getattr(ours, c))
        lat = torch.randn(2, 4, size // 8, size // 8, dtype=torch.bfloat16)       # warm-up: bf16 kernels primed for both
        ctx = torch.randn(2, 77, ref.text_encoder.config.hidden_size, dtype=torch.bfloat16)
        ours.unet(lat, 500, ctx); ref.unet(lat, 500, encoder_hidden_states=ctx)
        ref.vae.decode(lat[:1]); ours.enable_fast_sampling(); ours.decode_latents(lat[:1].float()); ours.disable_fast_sampling()
        cfgs = (("diffusers bf16 + DeepCache", run_ref_dc), ("ours bf16 + DeepCache", run_ours_dc),
                ("ours bf16 + fast sampling", run_ours_fast), ("diffusers bf16", run_ref), ("ours bf16", run_ours))
        t = {k: [] for k, _ in cfgs}
        for r in range(rounds):
            for k, fn in cfgs:
                if k in ("diffusers bf16", "ours bf16") and (args.no_context or sd15 and r > 0): continue   # context: one run
                if k == "ours bf16 + DeepCache" and args.no_same_work: continue
                dt, out[k] = timed(fn, k); t[k].append(dt)
                print(f"  {k}: {dt:.2f} s wall, {CPU[k][-1]:.2f} s CPU", flush=True)
                if args.json: Path(args.json + ".partial").write_text(json.dumps({"wall": t, "cpu": CPU}))
        dc_delta = (float(np.abs(out["ours bf16 + DeepCache"] - out["diffusers bf16 + DeepCache"]).max())
                    if "ours bf16 + DeepCache" in out else float("nan"))
        bf16_delta = float(np.abs(out["ours bf16"] - out["diffusers bf16"]).max()) if "ours bf16" in out else float("nan")
        fast_delta = float(np.abs(out["ours bf16 + fast sampling"] - out["diffusers bf16 + DeepCache"]).max())
        rows.update({k: v for k, v in t.items() if v})
    rows = {k: v for k, v in rows.items() if v}
    med = {k: float(np.median(v)) for k, v in rows.items()}
    best = {k: float(np.min(v)) for k, v in rows.items()}
    dcb = med["diffusers bf16 + DeepCache"]
    base = med.get("diffusers fp32", float("nan"))
    print(f"\n{name}: UNet {sum(p.numel() for p in ours.unet.parameters()):,} params, {size}×{size}, {steps} DPM++ 2M steps, "
          f"CFG 7.5, {torch.get_num_threads()} threads; median of {rounds} interleaved rounds")
    print(f"max |Δ| on [0,1] images, ours vs diffusers: fp32 {fp32_delta:.1e}; both bf16 {bf16_delta:.1e} (ours decodes in "
          f"fp32); both bf16 + DeepCache(3, 0) {dc_delta:.1e}; ours fast vs diffusers bf16 + DeepCache {fast_delta:.1e}")
    # per-round ratios to the same round's diffusers bf16 + DeepCache run (interleaved: each pair saw the same load)
    ref_runs = rows["diffusers bf16 + DeepCache"]
    per_round = {k: [a / b for a, b in zip(v, ref_runs)] for k, v in rows.items() if len(v) == len(ref_runs)}
    cpu = {k: v for k, v in CPU.items() if k in rows}
    cpu_ratio = {k: [a / b for a, b in zip(v, cpu["diffusers bf16 + DeepCache"])] for k, v in cpu.items()
                 if len(v) == len(cpu["diffusers bf16 + DeepCache"])}
    print(f"{'configuration':30s} {'median s':>8s} {'/ diffusers fp32':>17s} {'/ diffusers bf16+DC':>20s} "
          f"{'per-round ratios':>22s} {'CPU s':>7s} {'CPU ratios':>18s}   runs (s)")
    for k, v in med.items():
        pr = ' '.join(f'{x:.2f}' for x in per_round.get(k, []))
        cr = ' '.join(f'{x:.2f}' for x in cpu_ratio.get(k, []))
        print(f"{k:30s} {v:8.2f} {v / base:17.2f} {v / dcb:20.2f} {pr:>22s} {np.median(cpu[k]):7.2f} {cr:>18s}   "
              f"{' '.join(f'{x:.2f}' for x in rows[k])}")
    results[name] = {"median_s": med, "best_s": best, "runs": rows, "cpu_s": cpu, "per_round_ratio": per_round,
                     "cpu_ratio": cpu_ratio, "fp32_max_delta": fp32_delta, "dc_bf16_max_delta": dc_delta,
                     "fast_vs_dc_max_delta": fast_delta, "bf16_max_delta": bf16_delta, "size": size, "steps": steps, "threads": torch.get_num_threads()}



if not args.skip_sd15:
    folder = build_sd15(Path(args.folder))
    bench("SD v1.5-sized (random weights)", folder, args.size, args.steps, args.rounds, True, args.fp32_rounds)
if not args.skip_toy:
    CPU.clear()
    from sd_from_scratch.toy import default_model_path
    torch.set_num_threads(1)                 # a 1.4 M-parameter UNet gains nothing from a second (shared) thread
    bench("toy model (data/tiny-sd)", default_model_path(), 32, args.steps, args.toy_rounds, False)
import os
print(f"\nload average while running (2 shared cores): {os.getloadavg()}")
if args.json: Path(args.json).write_text(json.dumps(results, indent=2))
