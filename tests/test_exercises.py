"""Every exercise grader passes on the reference solution and fails, with the expected diagnosis, on typical mistakes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sd_from_scratch.exercises import solutions as S
from sd_from_scratch.exercises.grading import ExerciseError, compare, try_check
from sd_from_scratch.exercises.schedule import check_scaled_linear_betas, check_alphas_cumprod, check_add_noise
from sd_from_scratch.exercises.vae import check_encode_latents, check_decode_latents, tiny_vae
from sd_from_scratch.exercises.text import check_pad_and_truncate, check_pool_eot, check_causal_mask
from sd_from_scratch.exercises.attention import check_attention, check_timestep_embedding
from sd_from_scratch.exercises.samplers import check_ddim_step, check_euler_step
from sd_from_scratch.exercises.guidance import check_cfg, check_dynamic_threshold
from sd_from_scratch.exercises.training import check_noise_loss, check_drop_captions
from sd_from_scratch.exercises.evaluation import check_feature_stats, check_frechet_distance
from sd_from_scratch.schedule import add_noise

def fails(check, fn, *expected):
    "The grader must raise ExerciseError whose message contains every `expected` fragment."
    with pytest.raises(ExerciseError) as e: check(fn)
    for frag in expected: assert frag in str(e.value), f"{frag!r} not in {str(e.value)!r}"
    return str(e.value)

def _ab(ac, t, x): return ac[t].reshape(-1, *([1] * (x.ndim - 1)))

# ---- the solutions pass every grader
@pytest.mark.parametrize("check,sol", [
    (check_scaled_linear_betas, S.solution_scaled_linear_betas), (check_alphas_cumprod, S.solution_alphas_cumprod),
    (check_add_noise, S.solution_add_noise), (check_encode_latents, S.solution_encode_latents),
    (check_decode_latents, S.solution_decode_latents), (check_pad_and_truncate, S.solution_pad_and_truncate),
    (check_pool_eot, S.solution_pool_eot), (check_causal_mask, S.solution_causal_mask),
    (check_attention, S.solution_attention), (check_timestep_embedding, S.solution_timestep_embedding),
    (check_ddim_step, S.solution_ddim_step), (check_euler_step, S.solution_euler_step),
    (check_cfg, S.solution_cfg), (check_dynamic_threshold, S.solution_dynamic_threshold),
    (check_noise_loss, S.solution_noise_loss), (check_drop_captions, S.solution_drop_captions),
    (check_feature_stats, S.solution_feature_stats), (check_frechet_distance, S.solution_frechet_distance)],
    ids=lambda v: getattr(v, "__name__", ""))
def test_solution_passes(check, sol, capsys):
    check(sol)
    assert "✓ correct" in capsys.readouterr().out

def test_unfinished_blank_is_friendly(capsys):
    def stub(*a): raise NotImplementedError("fill in: something")
    try_check(check_cfg, stub)
    assert "not done yet: fill in: something" in capsys.readouterr().out

def test_compare_reports_worst_index_shape_dtype_sign_scale():
    x = torch.arange(6.).reshape(2, 3)
    y = x.clone(); y[1, 2] += 1
    with pytest.raises(ExerciseError, match=r"max \|Δ\| = 1 at index \(1, 2\)"): compare(y, x)
    with pytest.raises(ExerciseError, match="wrong shape"): compare(x[0], x)
    with pytest.raises(ExerciseError, match="wrong dtype torch.float64"): compare(x.double(), x)
    with pytest.raises(ExerciseError, match="negative"): compare(-(x + 1), x + 1)
    with pytest.raises(ExerciseError, match=r"×0\.5"): compare(0.5 * (x + 1), x + 1)

# ---- schedule
def test_betas_mistakes():
    fails(check_scaled_linear_betas, lambda n, a, b: torch.linspace(a, b, n), "spaced β itself linearly")
    fails(check_scaled_linear_betas, lambda n, a, b: torch.linspace(a ** 0.5, b ** 0.5, n), "you returned √β")
    fails(check_scaled_linear_betas, lambda n, a, b: torch.linspace(a ** 0.5, b ** 0.5, n, dtype=torch.float64) ** 2, "wrong dtype")

def test_alphas_cumprod_mistakes():
    fails(check_alphas_cumprod, lambda b: torch.cumprod(b, 0), "product of α = 1 − β")
    fails(check_alphas_cumprod, lambda b: 1 - b, "*cumulative* product")

def test_add_noise_mistakes():
    fails(check_add_noise, lambda x, e, t, ac: S.solution_add_noise(x, e, t + 1, ac), "off by one", "ᾱ_{t+1}")
    fails(check_add_noise, lambda x, e, t, ac: S.solution_add_noise(x, e, t - 1, ac), "ᾱ_{t−1}")
    fails(check_add_noise, lambda x, e, t, ac: _ab(ac, t, x) * x + (1 - _ab(ac, t, x)) * e, "take square roots")

# ---- VAE
@pytest.fixture(scope="module")
def vae(): return tiny_vae()

def test_encode_mistakes(vae):
    fails(lambda f: check_encode_latents(f, vae), lambda v, x: v.encode(x).mean, "forgot to multiply by vae.scaling_factor")
    fails(lambda f: check_encode_latents(f, vae), lambda v, x: v.encode(x).mean * v.scaling_factor ** 2, "twice")
    fails(lambda f: check_encode_latents(f, vae), lambda v, x: v.encode(x).mean * 0.18215, "hard-coded SD v1's 0.18215")

def test_decode_mistakes(vae):
    fails(lambda f: check_decode_latents(f, vae), lambda v, z: v.decode(z), "forgot to divide by vae.scaling_factor")
    fails(lambda f: check_decode_latents(f, vae), lambda v, z: v.decode(z * v.scaling_factor), "multiplied by scaling_factor")

# ---- text
def test_pad_mistakes():
    fails(check_pad_and_truncate, lambda ids, n, b, e, p: ([b, *ids[:n - 2], e] + [0] * n)[:n], "padded with 0", "49407")
    fails(check_pad_and_truncate, lambda ids, n, b, e, p: ([b, *ids, e] + [p] * n)[:n], "end token was cut off")
    fails(check_pad_and_truncate, lambda ids, n, b, e, p: [b, *ids[:n - 2], e] + [p] * (n + 1 - len(ids[:n - 2])), "length", "expected 77")

def test_pool_mistakes():
    fails(check_pool_eot, lambda h, ids: h[:, -1], "last position")
    fails(check_pool_eot, lambda h, ids: h[:, 0], "position 0")
    fails(check_pool_eot, lambda h, ids: h[torch.arange(len(ids)), ids.argmax(-1) - 1], "off by one")

def test_causal_mask_mistakes():
    fails(check_causal_mask, lambda L: torch.ones(L, L, dtype=torch.bool).triu(), "transposed")
    fails(check_causal_mask, lambda L: torch.ones(L, L, dtype=torch.bool).tril(-1), "diagonal")
    fails(check_causal_mask, lambda L: torch.full((L, L), float("-inf")).triu(1), "additive float mask")

# ---- attention / timestep embedding
def test_attention_mistakes():
    fails(check_attention, lambda q, k, v: (q @ k.transpose(-1, -2)).softmax(-1) @ v, "forgot to divide the scores by √d")
    fails(check_attention, lambda q, k, v: (q @ k.transpose(-1, -2) / 4).softmax(-2) @ v, "wrong axis")
    fails(check_attention, lambda q, k, v: (q @ k.transpose(-1, -2) / q.shape[-1]).softmax(-1) @ v, "by d instead of √d")

def test_timestep_embedding_mistakes():
    def flipped(t, d):
        e = S.solution_timestep_embedding(t, d); return torch.cat([e[:, d // 2:], e[:, :d // 2]], -1)
    fails(check_timestep_embedding, flipped, "cos first")
    fails(check_timestep_embedding, lambda t, d: S.solution_timestep_embedding(t + 1, d), "t+1")

# ---- samplers
def test_ddim_mistakes():
    def abar_t_instead_of_prev(x, e, t, tp, ac): return S.solution_ddim_step(x, e, t, t, ac)
    fails(check_ddim_step, abar_t_instead_of_prev, "ᾱ_t where ᾱ_prev belongs")
    fails(check_ddim_step, lambda x, e, t, tp, ac: S.solution_ddim_step(x, e, t, tp + 1, ac), "off by one", "t_prev+1")
    fails(check_ddim_step, lambda x, e, t, tp, ac: S.solution_ddim_step(x, e, t + 1, tp, ac), "ᾱ[t+1]")

def test_euler_mistakes():
    fails(check_euler_step, lambda x, e, s, sn: x + e * (s - sn), "wrong sign")
    fails(check_euler_step, lambda x, e, s, sn: x + (x - (x - s * e)) * (sn - s), "divide by σ")

# ---- guidance
def test_cfg_mistakes():
    fails(check_cfg, lambda u, c, w: u + w * (u - c), "wrong sign")
    fails(check_cfg, lambda u, c, w: w * u + (1 - w) * c, "swapped")
    fails(check_cfg, lambda u, c, w: w * c, "forgot the ε_uncond term")

def test_dynamic_threshold_mistakes():
    def no_divide(x0, r, m):
        f = x0.reshape(len(x0), -1); s = torch.quantile(f.abs(), r, dim=1).clamp(1, m)[:, None]
        return f.clamp(-s, s).reshape(x0.shape)
    def no_floor(x0, r, m):
        f = x0.reshape(len(x0), -1); s = torch.quantile(f.abs(), r, dim=1).clamp(max=m)[:, None]
        return (f.clamp(-s, s) / s).reshape(x0.shape)
    fails(check_dynamic_threshold, no_divide, "did not divide by s")
    fails(check_dynamic_threshold, no_floor, "at least 1")
    fails(check_dynamic_threshold, lambda x0, r, m: x0.clamp(-1, 1), "static thresholding")

# ---- training
def test_noise_loss_mistakes():
    fails(check_noise_loss, lambda m, x0, e, t, ac: F.mse_loss(m(add_noise(x0, e, t, ac), t), x0), "predicts the noise")
    fails(check_noise_loss, lambda m, x0, e, t, ac: F.mse_loss(m(x0, t), e), "fed the clean x0")
    fails(check_noise_loss, lambda m, x0, e, t, ac: F.mse_loss(m(add_noise(x0, e, t + 1, ac), t), e), "off by one", "ᾱ_{t+1}")
    fails(check_noise_loss, lambda m, x0, e, t, ac: F.mse_loss(m(add_noise(x0, e, t, ac), t), e, reduction="none"), "0-d tensor")

def test_drop_captions_mistakes():
    fails(check_drop_captions, lambda c, u, p: [x if float(v) < p else "" for x, v in zip(c, u)], "inverted")
    fails(check_drop_captions, lambda c, u, p: [None if float(v) < p else x for x, v in zip(c, u)], "not None")
    fails(check_drop_captions, lambda c, u, p: ["" if float(v) <= p else x for x, v in zip(c, u)], "u ≤ p")

# ---- evaluation
def test_feature_stats_mistakes():
    fails(check_feature_stats, lambda f: (f.mean(0), np.cov(f, rowvar=False, ddof=0)), "biased covariance")
    fails(check_feature_stats, lambda f: (f.mean(1), np.cov(f, rowvar=False)), "axis 0")
    fails(check_feature_stats, lambda f: (f.mean(0), np.cov(f)), "wrong shape")

def test_frechet_mistakes():
    from scipy import linalg
    def no_two(m1, s1, m2, s2):
        return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - np.trace(linalg.sqrtm(s1 @ s2).real))
    def elementwise(m1, s1, m2, s2):
        return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.sqrt(np.abs(s1 * s2))))
    fails(check_frechet_distance, no_two, "factor 2")
    fails(check_frechet_distance, elementwise, "matrix square root")
    fails(check_frechet_distance, lambda *a: S.solution_frechet_distance(*a) ** 0.5, "no final square root")

def test_to_model_range_mistakes():
    from sd_from_scratch.exercises.schedule import check_to_model_range
    check_to_model_range(S.solution_to_model_range)
    fails(check_to_model_range, lambda a: torch.from_numpy(a).float().div(255).permute(2, 0, 1)[None], "in [0, 1]")
    fails(check_to_model_range, lambda a: (torch.from_numpy(a).float() / 127.5 - 1)[None], "channels are last")
    fails(check_to_model_range, lambda a: (torch.from_numpy(a).double() / 127.5 - 1).permute(2, 0, 1)[None], "wrong dtype")

def test_frechet_non_number():
    fails(check_frechet_distance, lambda *a: (1.0, 2.0), "return one number")
