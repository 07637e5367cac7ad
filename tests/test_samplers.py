"""Samplers vs diffusers' scheduler loops: same timesteps/σ's, same outputs (≤ 1e-4), same random draws."""
import warnings
import pytest
import torch
from diffusers import (DDPMScheduler, DDIMScheduler, PNDMScheduler, LMSDiscreteScheduler, EulerDiscreteScheduler,
                       EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler)
from diffusers.utils import logging as dlogging
from sd_from_scratch.samplers import (SAMPLERS, SD_V1_SCHEDULER_CONFIG, sample, sampling_plan, timesteps,
                                      img2img_start, add_noise_at, GaussianMixture, sliced_wasserstein)

dlogging.set_verbosity_error()
REF = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "pndm": PNDMScheduler, "lms": LMSDiscreteScheduler,
       "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler, "heun": HeunDiscreteScheduler,
       "dpmpp_2m": DPMSolverMultistepScheduler, "dpmpp_2m_karras": DPMSolverMultistepScheduler}
SD = SD_V1_SCHEDULER_CONFIG
CONFIGS = {"sd15": SD, "trailing": {**SD, "timestep_spacing": "trailing"}, "linspace": {**SD, "timestep_spacing": "linspace"},
           "v": {**SD, "prediction_type": "v_prediction"},
           "defaults": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "skip_prk_steps": True,
                        "clip_sample": False}}
STOCHASTIC = ("ddpm", "euler_a", "ddim")


def ref_scheduler(name, config, **kw):
    return REF[name].from_config(config, **({"use_karras_sigmas": True} if name == "dpmpp_2m_karras" else {}), **kw)


_W = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
def model(x, t):
    "A cheap nonlinear stand-in for a UNet that depends on x and t."
    tt = torch.as_tensor(t, dtype=torch.float32)
    return torch.tanh(torch.einsum("bchw,cd->bdhw", x, _W) + torch.sin(tt / 150)) + 0.2 * x


def diffusers_loop(name, steps, config, noise, generator=None, eta=0.0, model=model, **sch_kw):
    sch = ref_scheduler(name, config, **sch_kw)
    sch.set_timesteps(steps)
    x, kw = noise * sch.init_noise_sigma, {}
    if name in STOCHASTIC: kw["generator"] = generator
    if name == "ddim": kw["eta"] = eta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in sch.timesteps:
            x = sch.step(model(sch.scale_model_input(x, t), t), t, x, **kw).prev_sample
    return x, sch


NOISE = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("steps", [1, 10, 25])
@pytest.mark.parametrize("name", SAMPLERS)
def test_matches_diffusers_loop(name, steps, cfg):
    config = CONFIGS[cfg]
    eta = 1.0 if name == "ddim" and steps == 25 else 0.0
    ref, sch = diffusers_loop(name, steps, config, NOISE, torch.Generator().manual_seed(2), eta)
    plan = sampling_plan(name, steps, config)
    assert torch.equal(plan.timesteps, sch.timesteps) and plan.timesteps.dtype == sch.timesteps.dtype
    if plan.sigmas is not None: torch.testing.assert_close(plan.sigmas, sch.sigmas, atol=1e-6, rtol=0)
    assert abs(plan.init_noise_sigma - float(sch.init_noise_sigma)) < 1e-5
    ours = sample(model, NOISE, name, steps, config, generator=torch.Generator().manual_seed(2), eta=eta)
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmpp_2m"])
def test_dynamic_threshold_matches_diffusers(name):
    big = lambda x, t: 4 * model(x, t)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ref, _ = diffusers_loop(name, 10, SD, NOISE, g1, model=big, thresholding=True, dynamic_thresholding_ratio=0.995,
                            sample_max_value=1.5)
    ours = sample(big, NOISE, name, 10, SD, generator=g2, dynamic_threshold=0.995, threshold_max=1.5)
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_clip_sample_default_matches(name):
    "Without clip_sample in the config, DDPM/DDIM clip x0 to [-1, 1] by default, as diffusers does."
    cfg = {k: v for k, v in SD.items() if k != "clip_sample"}
    ref, _ = diffusers_loop(name, 10, cfg, NOISE, torch.Generator().manual_seed(4))
    ours = sample(model, NOISE, name, 10, cfg, generator=torch.Generator().manual_seed(4))
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("strength", [0.3, 0.75])
@pytest.mark.parametrize("name", SAMPLERS)
def test_img2img_matches_diffusers(name, strength):
    "diffusers' img2img: get_timesteps + set_begin_index, add_noise at the first timestep, then the loop."
    steps = 10
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    sch = ref_scheduler(name, SD)
    sch.set_timesteps(steps)
    t_start = max(steps - min(int(steps * strength), steps), 0)
    ts = sch.timesteps[t_start * sch.order:]
    if hasattr(sch, "set_begin_index"): sch.set_begin_index(t_start * sch.order)
    x = sch.add_noise(init, NOISE, ts[:1].repeat(2))
    g1 = torch.Generator().manual_seed(6)
    kw = {"generator": g1} if name in STOCHASTIC else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in ts: x = sch.step(model(sch.scale_model_input(x, t), t), t, x, **kw).prev_sample
    assert img2img_start(steps, strength) == t_start
    ours = sample(model, NOISE, name, steps, SD, generator=torch.Generator().manual_seed(6), init=init, strength=strength)
    assert (ours - x).abs().max().item() <= 1e-4


def test_generator_list_and_callback():
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]
    # a list of generators draws one sample each, like diffusers' randn_tensor
    sch = EulerAncestralDiscreteScheduler.from_config(SD); sch.set_timesteps(5)
    x = NOISE * sch.init_noise_sigma; g = gens()
    for t in sch.timesteps: x = sch.step(model(sch.scale_model_input(x, t), t), t, x, generator=g).prev_sample
    seen = []
    ours = sample(model, NOISE, "euler_a", 5, SD, generator=gens(), callback=lambda i, t, x, x0: seen.append((i, float(t))))
    assert (ours - x).abs().max().item() <= 1e-4
    assert [i for i, _ in seen] == list(range(5)) and seen[0][1] == 801.0
    # a callback only observes: what it returns is ignored; `after_step` is the hook that replaces x
    plain = sample(model, NOISE, "ddim", 5, SD)
    assert torch.equal(sample(model, NOISE, "ddim", 5, SD, callback=lambda i, t, x, x0: torch.zeros_like(x)), plain)
    out = sample(model, NOISE, "ddim", 5, SD, after_step=lambda i, t, x: torch.zeros_like(x))
    assert out.abs().max() == 0
    order = []
    sample(model, NOISE, "ddim", 2, SD, after_step=lambda i, t, x: order.append(("after", i)) or x,
           callback=lambda i, t, x, x0: order.append(("cb", i)))
    assert order == [("after", 0), ("cb", 0), ("after", 1), ("cb", 1)]       # the callback sees the replaced x
    with pytest.raises(TypeError, match="after_step must return the new x"):
        sample(model, NOISE, "ddim", 2, SD, after_step=lambda i, t, x: None)


def test_errors():
    with pytest.raises(ValueError, match="choose one of: ddpm, ddim, pndm, lms, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_karras"):
        sample(model, NOISE, "k_lms")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps must be an integer"):
            sample(model, NOISE, "ddim", bad)
    with pytest.raises(ValueError, match="only applies to the 'ddim'"):
        sample(model, NOISE, "euler", 5, eta=1.0)
    with pytest.raises(ValueError, match="needs `init`"):
        sample(model, NOISE, "euler", 5, strength=0.5)
    with pytest.raises(NotImplementedError, match="rescale_betas_zero_snr"):
        sample(model, NOISE, "ddim", 5, {**SD, "rescale_betas_zero_snr": True})
    with pytest.raises(ValueError, match="strength must be in"):
        img2img_start(10, 1.5)


@pytest.mark.parametrize("name", SAMPLERS)
def test_misspelt_keyword_is_an_error(name):
    "Samplers take explicit keywords (no catch-all **kw): a misspelt one is a TypeError, not silently ignored."
    from sd_from_scratch.samplers import SAMPLER_FNS
    plan = sampling_plan(name, 3, SD)
    with pytest.raises(TypeError, match="unexpected keyword"):
        SAMPLER_FNS[name](model, NOISE, plan, strat=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        sample(model, NOISE, name, 3, SD, call_back=print)


def test_timesteps_public_helpers():
    assert timesteps("pndm", 50)[:4].tolist() == [981, 961, 961, 941]
    assert timesteps("dpmpp_2m", 25).tolist()[0] == 951
    p = sampling_plan("euler", 10)
    x0, n = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    assert torch.allclose(add_noise_at(p, x0, n, 3), n * p.sigmas[3])


def test_toy_error_shrinks_with_steps():
    gmm = GaussianMixture([[-0.6, 0.0], [0.6, 0.0]], [0.1, 0.1], [0.7, 0.3])
    m = gmm.model(sampling_plan("ddim").alphas_cumprod)
    truth = gmm.sample(2000, torch.Generator().manual_seed(0))
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    for name in ("ddim", "euler", "dpmpp_2m_karras"):
        errs = [sliced_wasserstein(sample(m, noise, name, k), truth) for k in (3, 25)]
        assert errs[1] < errs[0], (name, errs)
    assert sliced_wasserstein(sample(m, noise, "dpmpp_2m_karras", 25), truth) < 0.03


@pytest.mark.parametrize("name", ["pndm", "ddim", "euler", "euler_a", "lms", "dpmpp_2m"])
def test_inpaint_blend_matches_diffusers_loop(name):
    "diffusers' StableDiffusionInpaintPipeline loop for a 4-channel UNet at strength 1 (noise * init_noise_sigma)."
    from sd_from_scratch.samplers import inpaint_blend
    steps = 8
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    mask = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(8)) > 0.5).float()
    sch = ref_scheduler(name, SD)
    sch.set_timesteps(steps)
    sch.set_begin_index(0) if hasattr(sch, "set_begin_index") else None
    x, g = NOISE * sch.init_noise_sigma, torch.Generator().manual_seed(9)
    kw = {"generator": g} if name in STOCHASTIC else {}
    ts = sch.timesteps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, t in enumerate(ts):
            x = sch.step(model(sch.scale_model_input(x, t), t), t, x, **kw).prev_sample
            known = init
            if i < len(ts) - 1: known = sch.add_noise(init, NOISE, torch.tensor([ts[i + 1]]))
            x = (1 - mask) * known + mask * x
    plan = sampling_plan(name, steps, SD)
    ours = sample(model, NOISE, name, steps, SD, generator=torch.Generator().manual_seed(9),
                  after_step=inpaint_blend(plan, init, NOISE, mask))
    assert (ours - x).abs().max().item() <= 1e-4


def _model16(x, t):
    "Half-precision model: computes in float32, answers in the latents' dtype (like an fp16 UNet)."
    tt = torch.as_tensor(t, dtype=torch.float32)
    return (torch.tanh(torch.einsum("bchw,cd->bdhw", x.float(), _W) + torch.sin(tt / 150)) + 0.2 * x.float()).to(x.dtype)


@pytest.mark.parametrize("name", SAMPLERS)
def test_float16_latents_match_diffusers(name):
    "fp16 latents: Euler, Euler a and DPM-Solver step in float32 and store fp16, the others step in fp16 — as diffusers."
    noise = NOISE.half()
    ref, _ = diffusers_loop(name, 10, SD, noise, torch.Generator().manual_seed(2), model=_model16)
    ours = sample(_model16, noise, name, 10, SD, generator=torch.Generator().manual_seed(2))
    assert ours.dtype == ref.dtype == torch.float16
    assert (ours.float() - ref.float()).abs().max().item() <= 1e-3


@pytest.mark.parametrize("cfg", [{**SD, "skip_prk_steps": False}, {**SD, "skip_prk_steps": False, "timestep_spacing": "trailing"}, {}])
@pytest.mark.parametrize("steps", [4, 10, 25])
def test_pndm_with_runge_kutta_warmup(cfg, steps):
    "skip_prk_steps false (PNDMScheduler's default): 3 pseudo-RK4 steps, then PLMS — same timesteps and outputs."
    ref, sch = diffusers_loop("pndm", steps, cfg, NOISE)
    assert torch.equal(sampling_plan("pndm", steps, cfg).timesteps, sch.timesteps)
    assert (sample(model, NOISE, "pndm", steps, cfg) - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("strength", [0.3, 0.75])
def test_pndm_prk_img2img(strength):
    cfg, steps = {**SD, "skip_prk_steps": False}, 10
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    sch = PNDMScheduler.from_config(cfg)
    sch.set_timesteps(steps)
    t_start = img2img_start(steps, strength)
    ts = sch.timesteps[t_start:]
    x = sch.add_noise(init, NOISE, ts[:1].repeat(2))
    for t in ts: x = sch.step(model(x, t), t, x).prev_sample
    ours = sample(model, NOISE, "pndm", steps, cfg, init=init, strength=strength)
    assert (ours - x).abs().max().item() <= 1e-4


TINY_SD_SCHEDULER = {**SD, "_class_name": "DDIMScheduler", "timestep_spacing": "leading", "prediction_type": "epsilon"}

@pytest.mark.parametrize("config", [SD, TINY_SD_SCHEDULER], ids=["sd15", "tiny-sd"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_steps_up_to_num_train_timesteps(name, config):
    """The rule: every step count from 1 to num_train_timesteps gives a finite result, or a ValueError that names the
    largest step count this scheduler config allows (never an IndexError, a ZeroDivisionError or NaN latents)."""
    model = lambda x, t: 0.1 * x
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    for n in (998, 999, 1000):
        try: out = sample(model, noise, name, n, config)
        except ValueError as e:
            assert f"steps={n}" in str(e) and "at most" in str(e), e
            m = int(str(e).split("at most ")[1].split()[0].rstrip(";,."))
            assert m < n and torch.isfinite(sample(model, noise, name, m, config)).all()
        else: assert torch.isfinite(out).all(), (name, n)
    with pytest.raises(ValueError, match="steps"): sample(model, noise, name, 1001, config)


def test_pndm_prk_warmup_needs_four_steps():
    "PNDM with its Runge–Kutta warm-up cannot fit in fewer than 4 steps: a clear ValueError, not a numpy broadcast error."
    cfg = {**SD_V1_SCHEDULER_CONFIG, "skip_prk_steps": False}
    with pytest.raises(ValueError, match="needs steps ≥ 4"): sampling_plan("pndm", 3, cfg)
    assert len(sampling_plan("pndm", 4, cfg).timesteps) > 4
