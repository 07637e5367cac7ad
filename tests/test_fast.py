"""Lesson 10a: DeepCache from scratch (vs the `deepcache` package on diffusers), the guidance interval in the
pipeline, bf16 on CPU, and the fp32 path unchanged when none of it is switched on."""
import tempfile, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from fixtures import make_tiny_sd
import sd_from_scratch.fast as fast
from sd_from_scratch.fast import DeepCache, deepcache_forward, n_skips
from sd_from_scratch.pipeline import StableDiffusion
from sd_from_scratch.unet import UNet2DConditionModel, tiny_unet_config

warnings.simplefilter("ignore")
KW = dict(height=64, width=64, steps=10, sampler="dpmpp_2m", seed=0, output_type="np")


@pytest.fixture(scope="module")
def tiny(one_thread):
    from diffusers import DPMSolverMultistepScheduler
    folder = Path(tempfile.mkdtemp(prefix="sdfs_fast_")) / "tiny"
    ref = make_tiny_sd(folder)
    ours = StableDiffusion.from_pretrained(folder); ours.progress = False
    ref.scheduler = DPMSolverMultistepScheduler.from_config(ours.scheduler_config)
    return ours, ref


def run_ref(ref, prompt="a red 7"):
    return ref(prompt, num_inference_steps=10, height=64, width=64, generator=torch.Generator().manual_seed(0),
               output_type="np").images


def test_layerwise_forward_is_the_unet(one_thread):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(tiny_unet_config()).eval()
    x, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 16)
    with torch.no_grad():
        ref = unet(x, 300, ctx)
        for b in range(n_skips(unet)):
            eps, deep = deepcache_forward(unet, x, 300, ctx, b)
            assert torch.equal(eps, ref)
            again, _ = deepcache_forward(unet, x, 300, ctx, b, cached=deep)   # same input + its own cache: same output
            assert (again - ref).abs().max() < 1e-5


@pytest.mark.parametrize("interval,branch", [(3, 0), (2, 1), (4, 3)])
def test_deepcache_matches_the_deepcache_package(tiny, interval, branch):
    from DeepCache import DeepCacheSDHelper
    ours, ref = tiny
    helper = DeepCacheSDHelper(pipe=ref); helper.set_params(cache_interval=interval, cache_branch_id=branch); helper.enable()
    try: r = run_ref(ref)
    finally: helper.disable()
    ours.enable_deepcache(interval, branch)
    try: o = ours("a red 7", **KW)
    finally: ours.disable_deepcache()
    full = ours("a red 7", **KW)
    assert np.abs(o - r).max() <= 2e-3
    assert np.abs(o - full).max() > 1e-3                  # the cache really changed something


def test_fp32_path_unchanged(tiny):
    ours, ref = tiny
    before = ours("a red 7", **KW)
    ours.enable_fast_sampling()
    assert ours.unet.conv_in.weight.is_contiguous()                   # fp32: no channels_last unless asked for
    ours("a red 7", **KW); ours.disable_fast_sampling()
    after = ours("a red 7", **KW)
    assert np.array_equal(before, after)
    assert "forward" not in vars(ours.unet) and ours.deepcache is None and ours.guidance_interval is None
    assert np.abs(after - run_ref(ref)).max() <= 2e-3


def test_call_counts(tiny):
    ours, _ = tiny
    ours.enable_deepcache(3, 0); ours("a red 7", **KW)
    assert (ours.deepcache.full_calls, ours.deepcache.calls) == (4, 10)       # steps 0, 3, 6, 9
    ours("a red 7", **KW)
    assert (ours.deepcache.full_calls, ours.deepcache.calls) == (4, 10)       # emptied once per image
    ours.disable_deepcache()


def test_guidance_interval_in_the_pipeline(tiny):
    ours, _ = tiny
    full = ours("a red 7", **KW)
    ours.guidance_interval = (0.0, 1e9)                                       # every σ: same as plain CFG
    assert np.array_equal(ours("a red 7", **KW), full)
    ours.guidance_interval = (1e8, 1e9)                                       # no σ: the conditional pass alone = w 1
    nog = ours("a red 7", **KW)
    ours.guidance_interval = None
    assert np.abs(nog - ours("a red 7", **{**KW, "guidance_scale": 1.0})).max() < 1e-5
    seen = []
    unet_forward = ours.unet.forward
    ours.unet.forward = lambda x, t, c, **kw: (seen.append(x.shape[0]), unet_forward(x, t, c, **kw))[1]
    ours.guidance_interval = (1.0, 6.0)
    try: ours("a red 7", **KW)
    finally: ours.guidance_interval = None; del ours.unet.forward
    assert 1 in seen and 2 in seen                                            # some steps skip the uncond half


def test_bad_settings(tiny):
    ours, _ = tiny
    with pytest.raises(ValueError, match="interval must be an integer"): ours.enable_deepcache(0)
    with pytest.raises(ValueError, match="branch must be an integer in 0"): ours.enable_deepcache(3, 99)
    with pytest.raises(ValueError, match="guidance_interval must be"): ours.enable_fast_sampling(guidance_interval=(5, 1))
    assert "forward" not in vars(ours.unet)


def test_toy_bf16_and_fast_sampling(one_thread):
    from sd_from_scratch.toy import load_default, eval_prompts, read_images, load_digit_classifier
    clf = load_digit_classifier()
    prompts, digit, ink, _ = eval_prompts(40, 3)      # 40: on 20, one wrong ink is 5 points
    kw = dict(guidance_scale=7.5, steps=10, sampler="dpmpp_2m", seed=0, output_type="pt")
    p32 = load_default(); p32.progress = False
    p16 = load_default(dtype=torch.bfloat16); p16.progress = False
    assert p16.unet.dtype == torch.bfloat16 and next(p16.vae.parameters()).dtype == torch.float32
    ref, bf = p32(prompts, **kw), p16(prompts, **kw)
    assert (bf - ref).abs().mean() < 0.02
    p16.enable_fast_sampling()
    assert p16.deepcache.branch == 2 and "decode_latents" in vars(p16)     # the toy UNet's text branch; bf16 decode
    cl = torch.channels_last
    assert p16.unet.conv_in.weight.is_contiguous(memory_format=cl) and not p32.unet.conv_in.weight.is_contiguous(memory_format=cl)
    fast_imgs = p16(prompts, **kw)
    r = read_images(fast_imgs, clf)
    # lesson 10a measures ≥ 95 % on 100 prompts; DeepCache on the wrong branch (blind to the prompt) reads ink ≈ 77 %
    assert (r["digit"] == digit).float().mean() >= 0.9 and (r["fg"] == ink).float().mean() >= 0.85
    p16.disable_fast_sampling()
    assert not p16.unet.conv_in.weight.is_contiguous(memory_format=cl)               # NCHW again
    assert "decode_latents" not in vars(p16) and torch.equal(p16(prompts, **kw), bf)      # same batch: same images
