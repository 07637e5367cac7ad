"""StableDiffusion pipeline vs diffusers: same seed → same images (txt2img, img2img, inpainting), loading paths, errors."""
import shutil
import numpy as np
import pytest, torch
from PIL import Image
from fixtures import make_tiny_sd
from sd_from_scratch.pipeline import StableDiffusion, SAMPLERS, latents_to_rgb
from sd_from_scratch.images import sample_image

TOL = 2e-3           # on [0,1] images (DESIGN.md)
H = W = 64           # tiny VAE: ×8 → 8×8 latents
STEPS = 4

def diffusers_scheduler(sampler, config, **kw):
    from diffusers import (DDPMScheduler, DDIMScheduler, PNDMScheduler, LMSDiscreteScheduler, EulerDiscreteScheduler,
                           EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler)
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "pndm": PNDMScheduler, "lms": LMSDiscreteScheduler,
           "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler, "heun": HeunDiscreteScheduler,
           "dpmpp_2m": DPMSolverMultistepScheduler, "dpmpp_2m_karras": DPMSolverMultistepScheduler}[sampler]
    if sampler == "dpmpp_2m_karras": kw["use_karras_sigmas"] = True
    return cls.from_config(config, **kw)

def gen(seed=0): return torch.Generator("cpu").manual_seed(seed)

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("sd") / "tiny"
    ref = make_tiny_sd(d)
    ours = StableDiffusion.from_pretrained(d)
    ours.progress = False
    return d, ref, ours

@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory):
    d = tmp_path_factory.mktemp("sd") / "tiny_inpaint"
    ref = make_tiny_sd(d, inpaint=True)
    ours = StableDiffusion.from_pretrained(d)
    ours.progress = False
    return d, ref, ours

@pytest.fixture(scope="module")
def photo():
    img = sample_image("chelsea", H)
    mask = Image.new("L", (W, H), 0); mask.paste(255, (16, 16, 48, 48))
    return img, mask

def maxdiff(a, b): return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())

# ---------------------------------------------------------------- txt2img

@pytest.mark.parametrize("sampler", ["pndm", "ddim", "euler", "lms", "dpmpp_2m", "euler_a", "heun", "ddpm", "dpmpp_2m_karras"])
def test_txt2img_same_seed_same_image(tiny, sampler):
    d, ref, ours = tiny
    ref.scheduler = diffusers_scheduler(sampler, ours.scheduler_config)
    prompts = ["a red 7 on a blue background", "an astronaut riding a horse"]
    a = ref(prompts, negative_prompt=["blurry, low quality"] * 2, height=H, width=W, num_inference_steps=STEPS,
            guidance_scale=7.5, generator=gen(42), output_type="np").images
    b = ours(prompts, negative_prompt="blurry, low quality", height=H, width=W, steps=STEPS, guidance_scale=7.5,
             sampler=sampler, seed=42, output_type="np")
    assert a.shape == b.shape == (2, H, W, 3)
    assert maxdiff(a, b) <= TOL, f"{sampler}: max |Δ| = {maxdiff(a, b)}"

def test_defaults_follow_the_folder(tmp_path):
    "No sampler and no size given: like diffusers, use the folder's scheduler class and the UNet's native size."
    from diffusers import DDIMScheduler
    d = tmp_path / "ddim"
    ref = make_tiny_sd(d)
    ref.scheduler = DDIMScheduler.from_config(ref.scheduler.config)
    ref.save_pretrained(d)                                       # the folder now names DDIMScheduler
    ours = StableDiffusion.from_pretrained(d); ours.progress = False
    assert ours.default_sampler == "ddim"
    a = ref("a red 7 on a blue background", num_inference_steps=STEPS, generator=gen(3), output_type="np").images
    b = ours("a red 7 on a blue background", steps=STEPS, seed=3, output_type="np")
    size = ref.unet.config.sample_size * ref.vae_scale_factor
    assert a.shape == b.shape == (1, size, size, 3)
    assert maxdiff(a, b) <= TOL
    assert maxdiff(b, ours("a red 7 on a blue background", steps=STEPS, seed=3, sampler="pndm", output_type="np")) > 1e-4

def test_txt2img_num_images_and_generator(tiny):
    d, ref, ours = tiny
    ref.scheduler = diffusers_scheduler("euler_a", ours.scheduler_config)
    a = ref("a cat", height=H, width=W, num_inference_steps=STEPS, num_images_per_prompt=3, generator=gen(1),
            output_type="np").images
    b = ours("a cat", height=H, width=W, steps=STEPS, num_images=3, sampler="euler_a", generator=gen(1), output_type="np")
    assert b.shape == (3, H, W, 3) and maxdiff(a, b) <= TOL
    assert maxdiff(b[0], b[1]) > 1e-3                          # different noise per image
    c = ours("a cat", height=H, width=W, steps=STEPS, num_images=3, sampler="euler_a", seed=1, output_type="np")
    assert maxdiff(b, c) == 0                                   # seed= is a CPU generator with that seed

def test_txt2img_guidance_rescale(tiny):
    d, ref, ours = tiny
    for sampler in ("ddim", "euler"):
        ref.scheduler = diffusers_scheduler(sampler, ours.scheduler_config)
        kw = dict(height=H, width=W, output_type="np")
        a = ref("a dog", num_inference_steps=STEPS, guidance_rescale=0.7, generator=gen(3), **kw).images
        b = ours("a dog", steps=STEPS, guidance_rescale=0.7, sampler=sampler, seed=3, **kw)
        plain = ours("a dog", steps=STEPS, sampler=sampler, seed=3, **kw)
        assert maxdiff(a, b) <= TOL and maxdiff(b, plain) > 1e-5

def test_txt2img_ddim_dynamic_thresholding(tiny):
    d, ref, ours = tiny
    ref.scheduler = diffusers_scheduler("ddim", ours.scheduler_config, thresholding=True,
                                        dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    kw = dict(height=H, width=W, output_type="np")
    a = ref("a dog", num_inference_steps=STEPS, generator=gen(4), **kw).images
    b = ours("a dog", steps=STEPS, sampler="ddim", dynamic_threshold=0.9, threshold_max=1.5, seed=4, **kw)
    plain = ours("a dog", steps=STEPS, sampler="ddim", seed=4, **kw)
    assert maxdiff(a, b) <= TOL and maxdiff(b, plain) > 1e-3

def test_txt2img_ddim_eta_and_given_latents(tiny):
    d, ref, ours = tiny
    ref.scheduler = diffusers_scheduler("ddim", ours.scheduler_config)
    lat = torch.randn(1, 4, H // 8, W // 8, generator=gen(9))
    a = ref("x", height=H, width=W, num_inference_steps=STEPS, eta=0.5, latents=lat, generator=gen(5), output_type="np").images
    b = ours("x", height=H, width=W, steps=STEPS, eta=0.5, latents=lat, sampler="ddim", seed=5, output_type="np")
    assert maxdiff(a, b) <= TOL

def test_no_guidance(tiny):
    d, ref, ours = tiny
    ref.scheduler = diffusers_scheduler("euler", ours.scheduler_config)
    a = ref("x", height=H, width=W, num_inference_steps=STEPS, guidance_scale=1.0, generator=gen(6), output_type="np").images
    b = ours("x", height=H, width=W, steps=STEPS, guidance_scale=1.0, sampler="euler", seed=6, output_type="np")
    assert maxdiff(a, b) <= TOL

def test_output_types(tiny):
    d, ref, ours = tiny
    kw = dict(height=H, width=W, steps=2, sampler="euler", seed=0)
    pil = ours(["a", "b"], **kw)
    assert isinstance(pil, list) and len(pil) == 2 and pil[0].size == (W, H)
    npy = ours(["a", "b"], output_type="np", **kw)
    pt = ours(["a", "b"], output_type="pt", **kw)
    assert npy.shape == (2, H, W, 3) and pt.shape == (2, 3, H, W) and 0 <= pt.min() and pt.max() <= 1
    assert np.allclose(pt.permute(0, 2, 3, 1).numpy(), npy)
    assert np.array_equal(np.asarray(pil[1]), (npy[1] * 255).round().astype(np.uint8))
    assert ours("a", output_type="latent", **kw).shape == (1, 4, H // 8, W // 8)
    assert ours("a", height=H, width=2 * W, steps=2, output_type="np", seed=0).shape == (1, H, 2 * W, 3)

def test_callback_and_previews(tiny):
    d, ref, ours = tiny
    seen, seen4 = [], []
    ours("a", height=H, width=W, steps=4, sampler="euler", seed=0, callback=lambda i, t, x: seen.append((i, x.shape)))
    assert [i for i, _ in seen] == [0, 1, 2, 3] and seen[0][1] == (1, 4, H // 8, W // 8)
    ours("a", height=H, width=W, steps=4, sampler="ddim", seed=0, callback=lambda i, t, x, x0: seen4.append(x0 is not None))
    assert seen4 == [True] * 4
    every = []
    ours("a", height=H, width=W, steps=4, sampler="ddim", seed=0, callback=lambda i, t, x: every.append(i), callback_steps=2)
    assert every == [0, 2]
    lat = ours("a", height=H, width=W, steps=2, output_type="latent", seed=0)
    prev = ours.preview(lat)
    assert len(prev) == 1 and prev[0].size == (W // 8, H // 8)
    assert latents_to_rgb(torch.zeros(2, 4, 3, 5))[1].size == (5, 3)

def test_attention_slicing_same_result(tiny):
    d, ref, ours = tiny
    kw = dict(height=H, width=W, steps=3, sampler="euler", seed=0, output_type="np")
    a = ours("a", **kw)
    ours.enable_attention_slicing(7)
    try: b = ours("a", **kw)
    finally: ours.disable_attention_slicing()
    assert maxdiff(a, b) < 1e-5

# ---------------------------------------------------------------- img2img

@pytest.mark.parametrize("sampler", ["pndm", "ddim", "euler", "lms", "dpmpp_2m", "euler_a"])
def test_img2img_same_seed_same_image(tiny, photo, sampler):
    from diffusers import StableDiffusionImg2ImgPipeline
    d, ref, ours = tiny
    img, _ = photo
    i2i = StableDiffusionImg2ImgPipeline(**ref.components); i2i.set_progress_bar_config(disable=True)
    i2i.scheduler = diffusers_scheduler(sampler, ours.scheduler_config)
    a = i2i("a red cat", image=img, strength=0.7, num_inference_steps=STEPS, negative_prompt="dog",
            num_images_per_prompt=2, generator=gen(7), output_type="np").images
    b = ours.img2img("a red cat", img, strength=0.7, steps=STEPS, negative_prompt="dog", num_images=2,
                     sampler=sampler, seed=7, output_type="np")
    assert b.shape == (2, H, W, 3) and maxdiff(a, b) <= TOL, f"{sampler}: {maxdiff(a, b)}"

def test_img2img_threshold_rescale_and_strength(tiny, photo):
    from diffusers import StableDiffusionImg2ImgPipeline
    d, ref, ours = tiny
    img, _ = photo
    i2i = StableDiffusionImg2ImgPipeline(**ref.components); i2i.set_progress_bar_config(disable=True)
    i2i.scheduler = diffusers_scheduler("ddim", ours.scheduler_config, thresholding=True, dynamic_thresholding_ratio=0.9)
    a = i2i("a", image=img, strength=0.5, num_inference_steps=8, generator=gen(2), output_type="np").images
    b = ours.img2img("a", img, strength=0.5, steps=8, dynamic_threshold=0.9, sampler="ddim", seed=2, output_type="np")
    assert maxdiff(a, b) <= TOL
    # diffusers' img2img pipeline has no guidance_rescale (it ignores the argument); ours applies it
    c = ours.img2img("a", img, strength=0.5, steps=8, dynamic_threshold=0.9, guidance_rescale=0.5, sampler="ddim",
                     seed=2, output_type="np")
    assert maxdiff(b, c) > 1e-5
    # strength decides the start: a weak strength stays closer to the input than a strong one
    x = np.asarray(img, dtype=np.float32) / 255
    weak = ours.img2img("a", img, strength=0.2, steps=10, sampler="ddim", seed=0, output_type="np")[0]
    strong = ours.img2img("a", img, strength=1.0, steps=10, sampler="ddim", seed=0, output_type="np")[0]
    assert np.abs(weak - x).mean() < np.abs(strong - x).mean()

# ---------------------------------------------------------------- inpainting

@pytest.mark.parametrize("sampler", ["pndm", "euler", "dpmpp_2m"])
def test_inpaint_ordinary_unet_matches_diffusers(tiny, photo, sampler):
    from diffusers import StableDiffusionInpaintPipeline
    d, ref, ours = tiny
    img, mask = photo
    inp = StableDiffusionInpaintPipeline(**ref.components); inp.set_progress_bar_config(disable=True)
    inp.scheduler = diffusers_scheduler(sampler, ours.scheduler_config)
    a = inp("a red cat", image=img, mask_image=mask, height=H, width=W, num_inference_steps=STEPS, generator=gen(3),
            output_type="np").images
    b = ours.inpaint("a red cat", img, mask, steps=STEPS, sampler=sampler, seed=3, output_type="np")
    assert maxdiff(a, b) <= TOL

def test_inpaint_keeps_unmasked_region(tiny, photo):
    d, ref, ours = tiny
    img, mask = photo
    kw = dict(steps=STEPS, sampler="euler", seed=3)
    z = ours.inpaint("a red cat", img, mask, output_type="latent", **kw)
    # the latents outside the mask are exactly the image's latents (the same posterior sample: same generator)
    z_img = ours.encode_images(ours_image(img), gen(3))
    m = torch.nn.functional.interpolate((torch.from_numpy(np.asarray(mask)) > 127).float()[None, None], size=z.shape[-2:])
    assert torch.equal((z * (1 - m)), (z_img * (1 - m)))
    assert (z - z_img).abs()[..., m[0, 0] > 0].mean() > 0.1            # the hole was repainted
    # in pixels: outside the mask the output is (nearly) the VAE roundtrip, inside it differs
    out = ours.inpaint("a red cat", img, mask, output_type="np", **kw)[0]
    rt = ours.postprocess(z_img, "np")[0]
    mpx = np.asarray(mask)[..., None] > 127
    outside = np.abs(out - rt)[~mpx[..., 0]].mean(); inside = np.abs(out - rt)[mpx[..., 0]].mean()
    assert outside < inside, (outside, inside)   # (the random tiny VAE's global attention spreads changes a little)
    # paste_back keeps the original pixels outside the mask exactly
    pb = ours.inpaint("a red cat", img, mask, output_type="np", paste_back=True, **kw)[0]
    x = np.asarray(img, dtype=np.float32) / 255
    assert np.abs(pb - x)[~mpx[..., 0]].max() < 1e-6
    assert np.abs(pb - out)[mpx[..., 0]].max() < 1e-6

def ours_image(img):
    from sd_from_scratch.pipeline import prepare_image
    return prepare_image(img)

@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_inpaint_9_channel_unet_matches_diffusers(tiny_inpaint, photo, strength):
    d, ref, ours = tiny_inpaint
    img, mask = photo
    assert ours.unet_in_channels == 9
    ref.scheduler = diffusers_scheduler("pndm", ours.scheduler_config)
    a = ref("a red cat", image=img, mask_image=mask, height=H, width=W, strength=strength, num_inference_steps=STEPS,
            generator=gen(3), output_type="np").images
    b = ours.inpaint("a red cat", img, mask, strength=strength, steps=STEPS, sampler="pndm", seed=3, output_type="np")
    assert maxdiff(a, b) <= TOL
    pb = ours.inpaint("a red cat", img, mask, steps=STEPS, seed=3, output_type="np", paste_back=True)[0]
    mpx = np.asarray(mask) > 127
    assert np.abs(pb - np.asarray(img, dtype=np.float32) / 255)[~mpx].max() < 1e-6

# ---------------------------------------------------------------- bad input

def test_bad_input_errors(tiny, photo):
    d, ref, ours = tiny
    img, mask = photo
    with pytest.raises(ValueError, match="multiples of 8"): ours("a", height=60, width=64, steps=1)
    with pytest.raises(ValueError, match="steps must be an integer ≥ 1"): ours("a", height=H, width=W, steps=0)
    with pytest.raises(ValueError, match="unknown sampler 'dpm\\+\\+'"): ours("a", height=H, width=W, steps=1, sampler="dpm++")
    with pytest.raises(ValueError, match="strength must be in \\[0, 1\\]"): ours.img2img("a", img, strength=1.5, steps=2)
    with pytest.raises(ValueError, match="strength must be in \\[0, 1\\]"): ours.img2img("a", img, strength=-0.1, steps=2)
    with pytest.raises(ValueError, match="leaves no denoising step"): ours.img2img("a", img, strength=0.1, steps=5)
    with pytest.raises(ValueError, match="same size as the image"): ours.inpaint("a", img, mask.resize((32, 32)), steps=1)
    with pytest.raises(ValueError, match="multiples of 8"): ours.img2img("a", img, strength=0.5, steps=2, height=60, width=60)
    with pytest.raises(ValueError, match="output_type"): ours("a", height=H, width=W, steps=1, output_type="jpeg")
    with pytest.raises(ValueError, match="negative prompts for 2 prompts"):
        ours(["a", "b"], negative_prompt=["x", "y", "z"], height=H, width=W, steps=1)
    with pytest.raises(ValueError, match="either seed= or generator="): ours("a", height=H, width=W, steps=1, seed=1, generator=gen())
    with pytest.raises(ValueError, match="dynamic thresholding works with"):
        ours("a", height=H, width=W, steps=1, sampler="euler", dynamic_threshold=0.99)
    with pytest.raises(TypeError, match="prompt must be a string"): ours(3, height=H, width=W, steps=1)
    with pytest.raises(ValueError, match="latents must have shape"):
        ours("a", height=H, width=W, steps=1, latents=torch.zeros(1, 4, 4, 4))

def test_missing_weight_files(tiny, tmp_path):
    d, ref, ours = tiny
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in .*unet"): StableDiffusion.from_pretrained(broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match="lacks the component folder"): StableDiffusion.from_pretrained(broken)
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"): StableDiffusion.from_pretrained(tmp_path)

# ---------------------------------------------------------------- other ways in and out

def test_tokenizer_json_only_and_fp16_variant(tmp_path):
    ref = make_tiny_sd(tmp_path / "m", hub_tokenizer=False, variant="fp16")
    assert not (tmp_path / "m" / "tokenizer" / "vocab.json").exists()
    # diffusers writes only *.fp16.safetensors here; make the UNet's really half precision, as on the hub
    ref.unet.half().save_pretrained(tmp_path / "m" / "unet", variant="fp16"); ref.unet.float()
    assert not (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    ours = StableDiffusion.from_pretrained(tmp_path / "m", variant="fp16"); ours.progress = False
    assert ours.dtype == torch.float32                           # fp16 weights, computed in fp32 on CPU
    assert torch.equal(ours.unet.conv_in.weight, ref.unet.conv_in.weight.half().float())
    assert torch.equal(ours.vae.encoder.conv_in.weight, ref.vae.encoder.conv_in.weight)
    ids = ours.tokenizer(["a photo of a cat"])["input_ids"]
    assert ids.tolist() == ref.tokenizer(["a photo of a cat"], padding="max_length", max_length=77).input_ids

def test_single_file_and_save_pretrained(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline
    from sd_from_scratch.loading import save_ldm_checkpoint
    d, ref, ours = tiny
    f = save_ldm_checkpoint(tmp_path / "tiny.safetensors", ours.unet.state_dict(), ours.vae.state_dict(),
                            ours.text_encoder.state_dict())
    single = StableDiffusion.from_single_file(f, config_dir=d); single.progress = False
    kw = dict(height=H, width=W, steps=3, sampler="euler", seed=0, output_type="np")
    a = ours("a red cat", **kw)
    assert maxdiff(a, single("a red cat", **kw)) == 0
    out = ours.save_pretrained(tmp_path / "saved")
    back = StableDiffusion.from_pretrained(out); back.progress = False
    assert maxdiff(a, back("a red cat", **kw)) == 0
    theirs = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    theirs.scheduler = diffusers_scheduler("euler", ours.scheduler_config)
    b = theirs("a red cat", height=H, width=W, num_inference_steps=3, generator=gen(0), output_type="np").images
    assert maxdiff(a, b) <= TOL

@pytest.mark.slow
def test_full_size_sd15_random_weights_parity(tmp_path):
    "SD v1.5's configs with random weights, 512², a few steps: ours vs diffusers (slow: ~1 B parameters on CPU)."
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel, AutoencoderKL, PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from fixtures import write_clip_tokenizer
    from sd_from_scratch.loading import SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_CONFIG, SD15_SCHEDULER_CONFIG
    torch.manual_seed(0)
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**strip(SD15_UNET_CONFIG)), vae=AutoencoderKL(**strip(SD15_VAE_CONFIG)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**{k: v for k, v in SD15_TEXT_CONFIG.items() if k != "architectures"})),
        tokenizer=CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path / "tok")),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "sd15")
    ours = StableDiffusion.from_pretrained(tmp_path / "sd15"); ours.progress = False
    a = pipe("a photo of an astronaut", num_inference_steps=3, generator=gen(0), output_type="np").images
    b = ours("a photo of an astronaut", steps=3, seed=0, output_type="np")
    assert maxdiff(a, b) <= TOL

def test_hub_id_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ConnectionError, match="huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5"):
        StableDiffusion.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")


# ---- every argument checked at the door (issue #25)

@pytest.fixture(scope="module")
def toy():
    import sd_from_scratch
    pipe = sd_from_scratch.load_default(device="cpu"); pipe.progress = False
    return pipe

BAD_TXT2IMG = [  # (kwargs, error type, words the message must contain)
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(guidance_scale=float("inf")), ValueError, "guidance_scale"),
    (dict(eta=float("nan"), sampler="ddim"), ValueError, "eta"),
    (dict(height=0), ValueError, "height"),
    (dict(width=0), ValueError, "width"),
    (dict(height=32.0), TypeError, "height"),
    (dict(guidance_rescale=-0.5), ValueError, "guidance_rescale"),
    (dict(guidance_rescale=1.5), ValueError, "guidance_rescale"),
    (dict(seed=1.7), TypeError, "seed"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**70), ValueError, "seed"),
    (dict(num_images=True), TypeError, "num_images"),
    (dict(num_images=0), ValueError, "num_images"),
    (dict(generator="cpu"), TypeError, "generator"),
    (dict(steps=4.0), TypeError, "steps"),
    (dict(steps=1001), ValueError, "steps"),
    (dict(latents=torch.full((1, 4, 16, 16), float("nan"))), ValueError, "latents"),
    (dict(latents=torch.full((1, 4, 16, 16), float("inf"))), ValueError, "latents"),
    (dict(latents=torch.zeros(1, 4, 5, 4)), ValueError, "latents"),
    (dict(callback_steps=0), ValueError, "callback_steps"),
    (dict(threshold_max=float("nan")), ValueError, "threshold_max"),
    (dict(num_images=10**6), ValueError, "GiB"),
]

@pytest.mark.parametrize("kw,err,words", BAD_TXT2IMG, ids=[str(k)[:40] for k, _, _ in BAD_TXT2IMG])
def test_txt2img_rejects_at_the_door(toy, kw, err, words, one_thread):
    with pytest.raises(err, match=words): toy("a red 7 on a blue background", **{"steps": 2, **kw})

def test_integer_like_and_numpy_values_are_accepted(toy, one_thread):
    a = toy("a red 7", steps=np.int64(2), num_images=np.int32(1), seed=np.int64(3), height=np.int64(32),
            guidance_scale=np.float32(5.0), output_type="np")
    b = toy("a red 7", steps=2, seed=3, guidance_scale=5.0, output_type="np")
    np.testing.assert_array_equal(a, b)
    lat = torch.randn(1, 4, 16, 16, generator=gen(0))
    np.testing.assert_array_equal(toy("a red 7", steps=2, latents=lat.numpy(), output_type="np"),
                                  toy("a red 7", steps=2, latents=lat, output_type="np"))

def test_the_largest_step_count_gives_a_finite_image_or_a_clear_error(toy, one_thread):
    "The shipped model's DDIM config ('leading', steps_offset 1): 1000 DDIM steps and 999 DPM-Solver steps are clear errors."
    for sampler, n in (("ddim", 1000), ("dpmpp_2m", 999), ("pndm", 1000)):
        with pytest.raises(ValueError, match=f"steps={n} .*use at most"): toy("a red 7", steps=n, sampler=sampler)
    # that the largest allowed counts give finite latents is test_samplers.py::test_steps_up_to_num_train_timesteps

def test_image_range_rule_is_the_same_for_numpy_and_tensors(toy):
    from sd_from_scratch.pipeline import prepare_image
    a = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    t = torch.from_numpy(a).permute(2, 0, 1)
    ref = prepare_image(a)
    for x in (t, a * 255, t * 255, (a * 255).round().astype(np.uint8), (t * 255).round().to(torch.uint8), t * 2 - 1):
        torch.testing.assert_close(prepare_image(x), ref, atol=2.5 / 255, rtol=0)
    for bad in (a * 1000, t * 1000, t * 3 - 2, np.full((32, 32, 3), np.nan, np.float32)):
        with pytest.raises(ValueError, match="image"): prepare_image(bad)

def test_mask_rule(toy):
    from sd_from_scratch.pipeline import prepare_mask
    m = np.zeros((32, 32), np.float32); m[8:24, 8:24] = 1
    ref = prepare_mask(m, 32, 32)
    assert ref.sum() == 256
    torch.testing.assert_close(prepare_mask((m * 255).astype(np.uint8), 32, 32), ref)
    torch.testing.assert_close(prepare_mask(torch.from_numpy(m), 32, 32), ref)
    with pytest.raises(ValueError, match=r"mask.*\[0, 1\]"): prepare_mask(m * 100, 32, 32)    # 0..100 floats: ambiguous
    with pytest.raises(ValueError, match="mask"): prepare_mask(m * np.nan, 32, 32)
    photo = sample_image("chelsea", 32)
    with pytest.raises(TypeError, match="mask"): toy.inpaint("a red 7", photo, None, steps=2)

def test_img2img_size_guard_states_memory(toy):
    big = np.zeros((8000, 8000, 3), np.uint8)
    with pytest.raises(ValueError, match="GiB"): toy.img2img("a red 7", big, steps=2)

def test_long_prompt_warns_in_one_short_line(toy, caplog, one_thread):
    import warnings, logging
    with warnings.catch_warnings(record=True) as w, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        toy("a red 7 " * 2000, steps=1)
    msgs = [str(x.message) for x in w] + [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and len(msgs[0]) < 300 and "77" in msgs[0], [m[:200] for m in msgs]


def test_components_passed_in(tmp_path, one_thread):
    "from_pretrained(path, vae=...): a passed component is used as is and need not exist in the folder (issue 19)."
    import shutil
    from sd_from_scratch.images import shipped
    from sd_from_scratch.vae import AutoencoderKL
    path = shipped("tiny-sd")
    ref = StableDiffusion.from_pretrained(path); ref.progress = False
    kw = dict(steps=4, seed=0, output_type="np")
    vae = AutoencoderKL.from_pretrained(path / "vae")
    with torch.no_grad():
        for p in vae.decoder.parameters(): p.mul_(0.9)                    # "another" VAE
    swapped = StableDiffusion.from_pretrained(path, vae=vae); swapped.progress = False
    assert swapped.vae is vae
    a, b = ref("a red 3 on a blue background", **kw), swapped("a red 3 on a blue background", **kw)
    assert abs(a - b).max() > 1e-3
    shutil.copytree(path, tmp_path / "novae"); shutil.rmtree(tmp_path / "novae" / "vae")
    p2 = StableDiffusion.from_pretrained(tmp_path / "novae", vae=vae); p2.progress = False
    assert abs(p2("a red 3 on a blue background", **kw) - b).max() == 0
    with pytest.raises(FileNotFoundError, match="vae.*pass the missing"):
        StableDiffusion.from_pretrained(tmp_path / "novae")
    from diffusers import AutoencoderKL as DAE                         # diffusers' own VAE works too
    p3 = StableDiffusion.from_pretrained(path, vae=DAE.from_pretrained(path / "vae")); p3.progress = False
    assert abs(p3("a red 3 on a blue background", **kw) - a).max() <= 2e-3
    p4 = StableDiffusion.from_pretrained(path, unet=ref.unet, text_encoder=ref.text_encoder, tokenizer=ref.tokenizer,
                                         scheduler_config=ref.scheduler_config); p4.progress = False
    assert abs(p4("a red 3 on a blue background", **kw) - a).max() == 0


def test_prompt_weighting_reaches_the_unet(one_thread):
    "pipe(..., prompt_weighting=True): a plain prompt is unchanged, a weighted or long one changes the context (issue 19)."
    from sd_from_scratch.images import shipped
    pipe = StableDiffusion.from_pretrained(shipped("tiny-sd")); pipe.progress = False
    kw = dict(steps=4, seed=0, output_type="np")
    plain = pipe("a red 3 on a blue background", **kw)
    assert abs(pipe("a red 3 on a blue background", prompt_weighting=True, **kw) - plain).max() == 0
    assert abs(pipe("a (red:1.8) 3 on a blue background", prompt_weighting=True, **kw) - plain).max() > 1e-3
    long = ", ".join(["a red 3 on a blue background"] * 12)                # > 75 tokens: two chunks, no truncation
    seen = []
    unet = pipe.unet
    class Spy(torch.nn.Module):
        def __init__(s): super().__init__(); s.inner = unet; s.config = unet.config
        def forward(s, x, t, ctx, *a, **k): seen.append(ctx.shape[1]); return s.inner(x, t, ctx, *a, **k)
    pipe.unet = Spy()
    for kind in ("__call__", "img2img", "inpaint"):
        seen.clear()
        if kind == "__call__": pipe(long, prompt_weighting=True, **kw)
        elif kind == "img2img": pipe.img2img(long, plain[0], strength=0.5, prompt_weighting=True, **kw)
        else: pipe.inpaint(long, plain[0], np.ones((32, 32), np.float32), prompt_weighting=True, **kw)
        assert seen and set(seen) == {154}, (kind, seen)


def test_one_home_per_idea(tiny):
    "Issue 17: the pipeline's methods live in its lesson (class body or @patch), CFG is lesson 08's and re-noising lesson 07's."
    import inspect, re
    import sd_from_scratch.pipeline as P
    from sd_from_scratch.guidance import cfg_model
    src = inspect.getsource(P)
    assert not re.search(r"^StableDiffusion\.\w+\s*=", src, re.M), "methods attached after the class"
    assert "eps_uncond + " not in src and "cfg_combine(" not in src                     # the CFG formula is not re-written
    assert "add_noise_at" not in src                                                     # nor the inpaint re-noising
    d, ref, ours = tiny
    ctx = ours.encode_prompt("a red 3", "blue", guidance=True)
    x, t = torch.randn(1, 4, H // 8, W // 8, generator=gen(1)), torch.tensor(500)
    want = cfg_model(lambda x_, t_, c: ours.unet(x_, t_, c), ctx[1:], ctx[:1], 7.5, 0.7)(x, t)
    assert torch.equal(ours._eps_model(ctx, 7.5, 0.7)(x, t), want)


def test_callback_observes_only(tiny):
    "A user callback that returns a tensor does not change the image (it only observes; after_step is the hook that replaces)."
    d, ref, ours = tiny
    kw = dict(height=H, width=W, steps=3, sampler="ddim", seed=0, output_type="latent")
    assert torch.equal(ours("a", callback=lambda i, t, x: torch.zeros_like(x), **kw), ours("a", **kw))
    with pytest.raises(TypeError):
        ours("a", guidance_scael=3.0, **kw)                                              # a misspelt keyword is an error
