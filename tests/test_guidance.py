"""Classifier-free guidance, guidance rescale and thresholding vs diffusers' StableDiffusionPipeline loop."""
import warnings
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler, \
    EulerAncestralDiscreteScheduler
from diffusers.utils import logging as dlogging
from sd_from_scratch.samplers import SD_V1_SCHEDULER_CONFIG as SD, sample, sampling_plan
from sd_from_scratch.guidance import cfg_combine, rescale_noise_cfg, cfg_model, mimic_threshold, abar_at

dlogging.set_verbosity_error()
_W = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 0.5


def unet(x, t, ctx):
    "A cheap text-conditioned stand-in: ctx is B×L×4, it shifts each channel."
    tt = torch.as_tensor(t, dtype=torch.float32)
    return torch.tanh(torch.einsum("bchw,cd->bdhw", x, _W) + ctx.mean(1)[:, :, None, None] + torch.sin(tt / 150)) + 0.2 * x


COND = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
UNCOND = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(2)).expand(2, 5, 4)
LAT = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))


def rescale_ref(noise_cfg, noise_pred_text, guidance_rescale=0.0):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as ref
    return ref(noise_cfg, noise_pred_text, guidance_rescale=guidance_rescale)


def pipeline_loop(sch, steps, w, phi, generator=None, eta=0.0):
    "The denoising loop of diffusers' StableDiffusionPipeline.__call__, written out."
    sch.set_timesteps(steps)
    latents = LAT * sch.init_noise_sigma
    embeds = torch.cat([UNCOND, COND])
    kw = {}
    if generator is not None: kw["generator"] = generator
    if isinstance(sch, DDIMScheduler): kw["eta"] = eta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in sch.timesteps:
            inp = sch.scale_model_input(torch.cat([latents] * 2) if w > 1 else latents, t)
            noise_pred = unet(inp, t, embeds if w > 1 else COND)
            if w > 1:
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + w * (noise_pred_text - noise_pred_uncond)
                if phi > 0: noise_pred = rescale_ref(noise_pred, noise_pred_text, phi)
            latents = sch.step(noise_pred, t, latents, **kw).prev_sample
    return latents


CASES = [("pndm", PNDMScheduler), ("euler", EulerDiscreteScheduler), ("ddim", DDIMScheduler),
         ("dpmpp_2m", DPMSolverMultistepScheduler), ("euler_a", EulerAncestralDiscreteScheduler), ("ddpm", DDPMScheduler)]


@pytest.mark.parametrize("w,phi", [(1.0, 0.0), (7.5, 0.0), (7.5, 0.7), (12.0, 0.3)])
@pytest.mark.parametrize("name,cls", CASES)
def test_cfg_loop_matches_diffusers_pipeline(name, cls, w, phi):
    stochastic = name in ("euler_a", "ddpm", "ddim")
    eta = 1.0 if name == "ddim" else 0.0
    ref = pipeline_loop(cls.from_config(SD), 10, w, phi, torch.Generator().manual_seed(4) if stochastic else None, eta)
    ours = sample(cfg_model(unet, COND, UNCOND, w, guidance_rescale=phi), LAT, name, 10,
                  generator=torch.Generator().manual_seed(4), eta=eta)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_formulas():
    u, c = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(cfg_combine(u, c, 7.5), 7.5 * c + (1 - 7.5) * u, atol=1e-5, rtol=0)
    g = cfg_combine(u, c, 7.5)
    for phi in (0.0, 0.7, 1.0):
        torch.testing.assert_close(rescale_noise_cfg(g, c, phi), rescale_ref(g, c, phi), atol=1e-6, rtol=0)


def test_one_batch_uncond_first():
    calls = []
    def spy(x, t, ctx):
        calls.append((x.shape[0], ctx.clone()))
        return torch.zeros_like(x)
    cfg_model(spy, COND, UNCOND, 7.5)(LAT, torch.tensor(500))
    assert len(calls) == 1 and calls[0][0] == 4
    assert torch.equal(calls[0][1], torch.cat([UNCOND, COND]))


def test_diffusers_style_output_unwrapped():
    class Out:
        def __init__(self, s): self.sample = s
    m = cfg_model(lambda x, t, c: Out(unet(x, t, c)), COND, UNCOND, 7.5)
    torch.testing.assert_close(m(LAT, torch.tensor(10)), cfg_model(unet, COND, UNCOND, 7.5)(LAT, torch.tensor(10)))


@pytest.mark.parametrize("name,cls", [("ddim", DDIMScheduler), ("ddpm", DDPMScheduler), ("dpmpp_2m", DPMSolverMultistepScheduler)])
def test_dynamic_threshold_is_diffusers_thresholding(name, cls):
    big = lambda x, t: 3 * torch.tanh(x + float(t) / 500)
    px = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    sch = cls.from_config(SD, thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
    sch.set_timesteps(10)
    x, g = px.clone(), torch.Generator().manual_seed(6)
    for t in sch.timesteps:
        x = sch.step(big(x, t), t, x, **({"generator": g} if name == "ddpm" else {})).prev_sample
    ours = sample(big, px, name, 10, generator=torch.Generator().manual_seed(6), dynamic_threshold=0.995, threshold_max=1.0)
    assert (ours - x).abs().max().item() <= 1e-4


def test_mimic_threshold_properties():
    u, c = torch.randn(2, 4, 16, 16), 0.3 * torch.randn(2, 4, 16, 16)
    out = mimic_threshold(u, c, 15.0, mimic_scale=3.0)
    mim, hi = u + 3 * (c - u), u + 15 * (c - u)
    centred = lambda z: z.flatten(2) - z.flatten(2).mean(2, keepdim=True)
    torch.testing.assert_close(centred(out).abs().amax(2), centred(mim).abs().amax(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.flatten(2).mean(2), hi.flatten(2).mean(2), atol=1e-5, rtol=0)
    # mimic scale == guidance scale: nothing changes
    torch.testing.assert_close(mimic_threshold(u, c, 5.0, mimic_scale=5.0), u + 5 * (c - u), atol=1e-5, rtol=0)


def test_mimic_in_cfg_model_keeps_range():
    ac = sampling_plan("ddim").alphas_cumprod
    assert abs(abar_at(500, ac).item() - ac[500].item()) < 1e-6
    m_hi = cfg_model(unet, COND, UNCOND, 30.0)
    m_fix = cfg_model(unet, COND, UNCOND, 30.0, mimic_scale=2.0, alphas_cumprod=ac)
    hi, fix = sample(m_hi, LAT, "euler", 10), sample(m_fix, LAT, "euler", 10)
    assert fix.abs().max() < hi.abs().max()


def test_errors():
    with pytest.raises(ValueError, match="needs both `cond` and `uncond`"):
        cfg_model(unet, COND, None, 7.5)
    with pytest.raises(ValueError, match="needs both `cond` and `uncond`"):
        cfg_model(unet, None, None, 2.0)
    with pytest.raises(ValueError, match="takes no text input"):
        cfg_model(lambda x, t: x, COND, UNCOND, 7.5)
    with pytest.raises(ValueError, match="same shape"):
        cfg_model(unet, COND, UNCOND[:1], 7.5)
    # w <= 1 with no context: the model is used as it is
    torch.testing.assert_close(cfg_model(lambda x, t: 2 * x, guidance_scale=1.0)(LAT, 3), 2 * LAT)


def test_guidance_interval_rule():
    from sd_from_scratch.guidance import in_guidance_interval, sigma_at
    ac = sampling_plan("ddim", 1, SD).alphas_cumprod
    assert abs(sigma_at(999, ac) - 14.61) < 0.01 and sigma_at(0, ac) < 0.05          # SD v1's σ range
    assert in_guidance_interval(500, None, ac)
    assert [in_guidance_interval(t, (1.0, 6.0), ac) for t in (999, 500, 50)] == [False, True, False]


def test_cfg_model_guidance_interval():
    ac = sampling_plan("ddim", 1, SD).alphas_cumprod
    seen = []
    def counting(x, t, ctx): seen.append(x.shape[0]); return unet(x, t, ctx)
    m = cfg_model(counting, COND, UNCOND, 7.5, guidance_interval=(1.0, 6.0), alphas_cumprod=ac)
    full, cond_only = cfg_model(unet, COND, UNCOND, 7.5), cfg_model(unet, COND, UNCOND, 1.0)
    assert torch.equal(m(LAT, 500), full(LAT, 500)) and seen == [4]                # σ(500) ≈ 1.6: guided, CFG batch
    assert torch.equal(m(LAT, 999), cond_only(LAT, 999)) and seen[-1] == 2         # σ(999) ≈ 14.6: the cond pass alone
    with pytest.raises(ValueError, match="guidance_interval must be"):
        cfg_model(unet, COND, UNCOND, 7.5, guidance_interval=(6.0, 1.0))


def test_static_vs_dynamic_thresholding():
    "threshold_max = 1 is static clipping; s > 1 divides instead (fewer values stuck at the limit)."
    big = lambda x, t: 3 * torch.tanh(x + float(t) / 500)
    px = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    static = sample(big, px, "ddim", 10, dynamic_threshold=0.995, threshold_max=1.0)
    dynamic = sample(big, px, "ddim", 10, dynamic_threshold=0.995, threshold_max=3.0)
    sch = DDIMScheduler.from_config(SD, thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=3.0)
    sch.set_timesteps(10); x = px.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in sch.timesteps: x = sch.step(big(x, t), t, x).prev_sample
    assert (dynamic - x).abs().max() < 1e-4
    assert not torch.allclose(static, dynamic)
