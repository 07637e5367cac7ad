"""Every exercise grader passes on the reference solution and fails, with the expected diagnosis, on typical mistakes;
the learner notebooks hold no solution, and the package holds none either."""
import importlib.util, json, re
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("teachers_solutions", ROOT / "teachers" / "solutions.py")
S = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(S)       # teachers/ is not a package: not in the wheel
from sd_from_scratch.exercises.grading import ExerciseError, compare, try_check
from sd_from_scratch.exercises.schedule import check_scaled_linear_betas, check_alphas_cumprod, check_add_noise
from sd_from_scratch.exercises.vae import check_encode_latents, check_decode_latents, tiny_vae
from sd_from_scratch.exercises.text import check_pad_and_truncate, check_pool_eot, check_causal_mask
from sd_from_scratch.exercises.attention import check_attention, check_timestep_embedding
from sd_from_scratch.exercises.samplers import check_ddim_step, check_euler_step
from sd_from_scratch.exercises.guidance import check_cfg, check_dynamic_threshold
from sd_from_scratch.exercises.training import check_noise_loss, check_drop_captions
from sd_from_scratch.exercises.evaluation import check_feature_stats, check_frechet_distance
from sd_from_scratch.exercises.vae import check_latent_std
from sd_from_scratch.exercises.guidance import check_plms_w11
from sd_from_scratch.exercises.training import check_mean_leak
from sd_from_scratch.exercises.unet import check_resblock, check_cross_attention, check_unet_forward
from sd_from_scratch.exercises.pipeline import check_generate, check_half_size
from sd_from_scratch.exercises.toy import check_train, check_what_breaks
from sd_from_scratch.exercises.data import check_funnel, check_buckets
from sd_from_scratch.exercises.cli import check_regenerate
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
    (check_feature_stats, S.solution_feature_stats), (check_frechet_distance, S.solution_frechet_distance),
    (check_latent_std, S.solution_measure_latent_std), (check_plms_w11, S.solution_measure_plms_w11),
    (check_mean_leak, S.solution_measure_mean_leak), (check_resblock, S.solution_resblock),
    (check_cross_attention, S.solution_cross_attention), (check_unet_forward, S.solution_unet_forward),
    (check_generate, S.solution_generate), (check_half_size, S.solution_measure_half_size),
    (check_train, S.solution_train), (check_what_breaks, S.solution_what_breaks),
    (check_funnel, S.solution_funnel), (check_buckets, S.solution_assign_buckets),
    (check_regenerate, S.solution_regenerate)],
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


# ---- what-if measurements: a wrong measurement is outside the band, and the message says what should have been seen
def test_latent_std_mistakes():
    good = S.solution_measure_latent_std()
    fails(check_latent_std, lambda: {"raw_std": good["scaled_std"], "scaled_std": good["scaled_std"]}, "raw_std", "outside the expected band", "What you should see")
    fails(check_latent_std, lambda: {"raw_std": good["raw_std"]}, "lacks ['scaled_std']")
    fails(check_latent_std, lambda: [1.0, 2.0], "return a dict")

def test_plms_w11_mistakes():
    fails(check_plms_w11, lambda: {"ddim": 1.0, "pndm": 1.0}, "pndm", "outside the expected band", "PLMS only")
    fails(check_plms_w11, lambda: {"ddim": 0.2, "pndm": 0.2}, "ddim", "DDIM still paints")

def test_mean_leak_mistakes():
    fails(check_mean_leak, lambda: {"offset_0": 0.05, "offset_0.1": 0.05}, "offset_0", "Upsample to 64×64")   # e.g. t = 999 with ᾱ mixed up
    fails(check_mean_leak, lambda: {"offset_0": "high", "offset_0.1": 0.5}, "expected a number")

# ---- UNet
def _res_parts(blk, x, temb):
    h = blk.conv1(F.silu(blk.norm1(x)))
    return h, blk.time_emb_proj(F.silu(temb))[:, :, None, None], (x if blk.conv_shortcut is None else blk.conv_shortcut(x))

def test_resblock_mistakes():
    def no_skip(blk, x, temb):
        h, t, s = _res_parts(blk, x, temb); return blk.conv2(F.silu(blk.norm2(h + t)))
    def time_late(blk, x, temb):
        h, t, s = _res_parts(blk, x, temb); return s + blk.conv2(F.silu(blk.norm2(h)) + t)
    def no_time_act(blk, x, temb):
        h, t, s = _res_parts(blk, x, temb); return s + blk.conv2(F.silu(blk.norm2(h + blk.time_emb_proj(temb)[:, :, None, None])))
    def no_shortcut_conv(blk, x, temb):
        h, t, s = _res_parts(blk, x, temb); return x + blk.conv2(F.silu(blk.norm2(h + t)))
    fails(check_resblock, no_skip, "skip connection is missing")
    fails(check_resblock, time_late, "after norm2")
    fails(check_resblock, no_time_act, "through SiLU")
    fails(check_resblock, no_shortcut_conv, "raised RuntimeError")

def test_cross_attention_mistakes():
    def self_attn(attn, x, ctx): return S.solution_cross_attention(attn, x, x)
    def one_head(attn, x, ctx):
        q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
        return attn.to_out[0]((q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1) @ v)
    def no_out(attn, x, ctx):
        class NoOut: pass
        a = NoOut(); a.heads, a.to_q, a.to_k, a.to_v, a.to_out = attn.heads, attn.to_q, attn.to_k, attn.to_v, [lambda o: o]
        return S.solution_cross_attention(a, x, ctx)
    fails(check_cross_attention, self_attn, "self-attention")
    fails(check_cross_attention, one_head, "one head")
    fails(check_cross_attention, no_out, "to_out[0] is missing")

def _forward_variant(unet, x, t, ctx, fifo=False, swap=False, final=True, conv_in_skip=True):
    temb = unet.time_embed(t, x.shape[0], x.device, x.dtype)
    h = unet.conv_in(x); skips = [h] if conv_in_skip else []
    for blk in unet.down_blocks:
        for i, r in enumerate(blk.resnets):
            h = r(h, temb)
            if blk.has_attn: h = blk.attentions[i](h, ctx)
            skips.append(h)
        if blk.downsamplers is not None: h = blk.downsamplers[0](h); skips.append(h)
    h = unet.mid_block(h, temb, ctx)
    for blk in unet.up_blocks:
        for i, r in enumerate(blk.resnets):
            s = skips.pop(0) if fifo else skips.pop()
            h = r(torch.cat([s, h] if swap else [h, s], 1), temb)
            if blk.has_attn: h = blk.attentions[i](h, ctx)
        if blk.upsamplers is not None: h = blk.upsamplers[0](h)
    return unet.conv_out(F.silu(unet.conv_norm_out(h)) if final else h)

def test_unet_forward_mistakes():
    fails(check_unet_forward, lambda u, x, t, c: _forward_variant(u, x, t, c, fifo=True), "raised RuntimeError", "END of the")
    fails(check_unet_forward, lambda u, x, t, c: _forward_variant(u, x, t, c, conv_in_skip=False), "ran out of skips", "conv_in")
    fails(check_unet_forward, lambda u, x, t, c: _forward_variant(u, x, t, c, final=False), "final GroupNorm")

# ---- pipeline
@pytest.fixture(scope="module")
def pipe():
    from sd_from_scratch.exercises.measure import toy_pipe
    return toy_pipe()

def test_generate_mistakes(pipe):
    kw = dict(steps=20, sampler="ddim", output_type="pt")
    fails(check_generate, lambda p, ps, seed: p(ps, guidance_scale=1.0, seed=seed, **kw), "no guidance", "digit classifier reads")
    fails(check_generate, lambda p, ps, seed: p([""] * len(ps), negative_prompt=ps, seed=seed, **kw), "swapped")
    fails(check_generate, lambda p, ps, seed: p(ps, seed=seed, **kw) * 2 - 1, "in [-1, 1]")
    fails(check_generate, lambda p, ps, seed: p(ps, seed=seed, steps=20, sampler="ddim"), "not a list of PIL images")

def test_half_size_mistakes(pipe):
    fails(check_half_size, lambda: {"native_digit": 1.0, "half_digit": 1.0, "half_background": 1.0}, "half_digit", "resize the 16²")
    fails(check_half_size, lambda: {"native_digit": 1.0, "half_digit": 0.1}, "lacks ['half_background']")

# ---- toy world training: graded on the trained models
def _train_ignoring_p(p_drop, steps=1500, seed=0): return S.solution_train(0.1, steps, seed)
def _train_no_step(p_drop, steps=1500, seed=0):
    from sd_from_scratch.exercises.toy import ColourModel
    return ColourModel(seed=seed)
def _train_drop_to_wrong_id(p_drop, steps=1500, seed=0):
    from sd_from_scratch.exercises.toy import ColourModel, colour_batch, COLOUR_AC
    from sd_from_scratch.training import diffusion_loss
    m = ColourModel(seed=seed); opt = torch.optim.AdamW(m.parameters(), lr=3e-3); g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0, ids = colour_batch(256, g)
        ids = torch.where(torch.rand(len(ids), generator=g) < p_drop, 1, ids)       # "dropped" to colour 1, not EMPTY = 0
        loss = diffusion_loss(m, x0, ids, COLOUR_AC, g); opt.zero_grad(); loss.backward(); opt.step()
    return m

def test_train_mistakes():
    fails(check_train, _train_no_step, "did not learn the colours")
    fails(check_train, _train_drop_to_wrong_id, "empty caption was not learned", "EMPTY = 0")
    fails(check_train, _train_ignoring_p, "empty caption was learned", "is p ignored")

def test_what_breaks_mistakes():
    good = {"gain_with_dropout": 0.17, "gain_without_dropout": 0.02, "empty_ratio_with_dropout": 1.57, "empty_ratio_without_dropout": 2.4}
    fails(check_what_breaks, lambda: {**good, "gain_with_dropout": 0.01}, "gain_with_dropout", "outside the expected band")
    fails(check_what_breaks, lambda: {**good, "empty_ratio_with_dropout": 2.4, "empty_ratio_without_dropout": 1.57},
          "empty_ratio_with_dropout", "10 % caption dropout")
    fails(check_what_breaks, lambda: {"gain_with_dropout": 0.17, "gain_without_dropout": 0.02}, "lacks")

# ---- data
def test_funnel_mistakes():
    from sd_from_scratch.data import sd_filters
    fails(check_funnel, lambda rows: [len(rows)] + [sum(f(r) for r in rows) for f in sd_filters()], "survivors of the previous one")
    def longer_side(rows):
        fs = sd_filters(); fs[1] = lambda r: max(r["width"], r["height"]) >= 512
        out = [len(rows)]
        for f in fs: rows = [r for r in rows if f(r)]; out.append(len(rows))
        return out
    fails(check_funnel, longer_side, "longer side")
    fails(check_funnel, lambda rows: S.solution_funnel(rows)[1:], "first one is 'all rows'")

def test_bucket_mistakes():
    def linear(sizes, buckets):
        r, b = np.array([w / h for w, h in sizes]), np.array([w / h for w, h in buckets])
        return np.abs(r[:, None] - b[None]).argmin(1)
    def swapped(sizes, buckets): return S.solution_assign_buckets([(h, w) for w, h in sizes], buckets)
    fails(check_buckets, linear, "linearly")
    fails(check_buckets, swapped, "swapped")

# ---- command line: the PNG's parameters chunk
def test_regenerate_mistakes():
    from sd_from_scratch.exercises.cli import _image
    fails(check_regenerate, lambda path, pipe: _image(pipe, negative=None), "negative prompt was ignored")
    fails(check_regenerate, lambda path, pipe: _image(pipe, sampler="ddim"), "PLMS", "pndm")
    fails(check_regenerate, lambda path, pipe: _image(pipe, guidance=7.5), "CFG scale")
    fails(check_regenerate, lambda path, pipe: _image(pipe).resize((16, 16)), "wrong shape")

# ---- graders out of sight
LEARNER_NBS = sorted((ROOT / "nbs" / "exercises").glob("ex_*.ipynb"))

def _solution_lines() -> list[str]:
    "Every non-trivial line of every solution body in teachers/solutions.py."
    import inspect
    lines = []
    for name, fn in vars(S).items():
        if not name.startswith("solution_") or not callable(fn): continue
        body = inspect.getsource(fn).splitlines()[1:]
        for l in body:
            l = l.split("#")[0].strip()
            if (len(l) >= 16 and not l.startswith(("def ", "return {", "from ", "import ")) and l not in ("return out", "return model") and "->" not in l
                    and not l.endswith(("= tiny_vae()", "= toy_pipe()"))):          # setup the learner notebooks give
                lines.append(l)
    return lines

def test_learner_notebooks_hold_no_solution():
    assert len(LEARNER_NBS) >= 13
    sol = _solution_lines()
    assert len(sol) > 60
    norm = lambda s: re.sub(r"\s+", "", s)
    for nb in LEARNER_NBS:
        cells = json.loads(nb.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells)
        for c in cells:
            src = "".join(c["source"])
            assert "#| export" not in src and "default_exp" not in src, f"{nb.name}: a learner notebook exports nothing (graders live in nbs/exercises/graders/)"
            assert not re.search(r"\bsolutions?\b", src.lower()) or nb.name == "ex_00_grading.ipynb", f"{nb.name}: mentions solutions"
            if c["cell_type"] == "code":
                assert "def check_" not in src and "compare(" not in src, f"{nb.name}: grader code in a learner notebook"
        flat = norm(text)
        leaked = [l for l in sol if norm(l) in flat]
        assert not leaked, f"{nb.name} contains reference-solution lines: {leaked}"

def test_every_learner_blank_has_a_check_and_a_time():
    for nb in LEARNER_NBS:
        if nb.name == "ex_00_grading.ipynb": continue
        cells = json.loads(nb.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells)
        assert "**Time:**" in text and "**Prerequisites:**" in text, f"{nb.name}: states no time/prerequisites"
        blanks = re.findall(r"^def (\w+)\(", text, flags=re.M)
        for b in blanks: assert re.search(rf"try_check\(check_\w+, {b}\)", text), f"{nb.name}: blank {b} has no try_check"

def test_solutions_not_in_package():
    import sd_from_scratch.exercises as E
    pkg = Path(E.__file__).parent
    assert not (pkg / "solutions.py").exists()
    assert not (ROOT / "teachers" / "__init__.py").exists()    # not a package: setuptools.find_packages() skips it
    import setuptools
    assert not any(p.startswith("teachers") for p in setuptools.find_packages(str(ROOT)))
    for py in pkg.glob("*.py"): assert "solution_" not in py.read_text(), f"{py.name} mentions a solution"
