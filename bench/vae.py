"""Time our AutoencoderKL against diffusers' on CPU: SD v1.5 VAE config (random weights, shared by both),
decode of a 1×4×64×64 latent → 512×512 image (and optionally encode), same process, same inputs, same threads.

usage: python bench/vae.py [--threads N] [--repeats R] [--size 512] [--encode]
Runs alternate ours/diffusers so background load hits both equally; prints best-of-R times and the ratio ours/diffusers."""
import argparse, tempfile, time
import torch
from diffusers import AutoencoderKL as DiffusersVAE
from sd_from_scratch.vae import AutoencoderKL, SD_VAE_CONFIG


def best_of(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}, times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--encode", action="store_true", help="also time encode")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ref = DiffusersVAE(**{k: v for k, v in SD_VAE_CONFIG.items() if not k.startswith("_")}).eval()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = AutoencoderKL.from_pretrained(d)
    z = torch.randn(1, 4, a.size // 8, a.size // 8)
    x = torch.rand(1, 3, a.size, a.size) * 2 - 1
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, SD v1.5 VAE config "
          f"({sum(p.numel() for p in ours.parameters()):,} params), fp32, CPU")
    with torch.inference_mode():
        dd, od = ref.decode(z).sample, ours.decode(z)                        # warm-up + correctness
        print(f"decode {a.size}²: max |Δ| ours vs diffusers = {(dd - od).abs().max().item():.2e}")
        best, all_t = best_of({"diffusers": lambda: ref.decode(z).sample, "ours": lambda: ours.decode(z)}, a.repeats)
        print(f"decode 1×4×{a.size // 8}×{a.size // 8} → {a.size}²: diffusers {best['diffusers']:.2f} s, "
              f"ours {best['ours']:.2f} s (best of {a.repeats}), ratio ours/diffusers = {best['ours'] / best['diffusers']:.3f}")
        print("  all runs:", {k: [round(t, 2) for t in v] for k, v in all_t.items()})
        if a.encode:
            ref.encode(x); ours.encode(x)
            best, all_t = best_of({"diffusers": lambda: ref.encode(x).latent_dist.mean, "ours": lambda: ours.encode(x).mean}, a.repeats)
            print(f"encode {a.size}²: diffusers {best['diffusers']:.2f} s, ours {best['ours']:.2f} s, "
                  f"ratio ours/diffusers = {best['ours'] / best['diffusers']:.3f}")


if __name__ == "__main__":
    main()
