"""FID's matrix square root: ours (symmetric eigh of Σ1^½ Σ2 Σ1^½, float64) vs pytorch-fid's scipy.linalg.sqrtm(Σ1 Σ2).

Same features, same process, same threads; warm-up then best-of-N. Prints seconds, the ratio ours/reference and |Δ|.
usage: python bench/metrics.py [--dims 256 512 1024] [--threads 1] [--repeat 3]"""
import argparse, time, warnings
import numpy as np
import scipy.linalg
import torch
from sd_from_scratch.metrics import feature_stats, frechet_distance

def reference(mu1, s1, mu2, s2, eps=1e-6):
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            off = np.eye(len(s1)) * eps
            covmean = scipy.linalg.sqrtm((s1 + off).dot(s2 + off))
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real)

def best(fn, repeat):
    fn(); ts = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:
        from threadpoolctl import threadpool_limits; threadpool_limits(a.threads)
    except ImportError: pass
    rng = np.random.default_rng(0)
    print(f"{'D':>5} {'N':>5} {'ours s':>9} {'scipy s':>9} {'ours/scipy':>10} {'|Δ|':>8}")
    for d in a.dims:
        n = 2 * d
        s = [feature_stats(rng.normal(size=(n, d))), feature_stats(rng.normal(size=(n, d)) * 1.1 + 0.02)]
        args = (*s[0], *s[1])
        t_o, t_r = best(lambda: frechet_distance(*args), a.repeat), best(lambda: reference(*args), a.repeat)
        print(f"{d:5d} {n:5d} {t_o:9.4f} {t_r:9.4f} {t_o / t_r:10.3f} {abs(frechet_distance(*args) - reference(*args)):8.1e}")
