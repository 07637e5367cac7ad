"""Toy world v2 (lesson 12): the shipped models load in diffusers and give our images; the bucketed data, partial
captions, random masks and the 9-channel UNet surgery; cross-attention maps (lesson 10)."""
import warnings
import numpy as np
import pytest
import torch
from sd_from_scratch import toy

TOL = 2e-3
PROMPTS = ["a red 7 on a blue background", "a 3", "a green digit on a white background"]


def _diffusers(cls, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = cls.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def base():
    return toy.load_default("base")


@pytest.fixture(scope="module")
def inpainting():
    return toy.load_default("inpainting")


@pytest.mark.parametrize("hw", [(32, 32), (32, 64), (64, 32)])
def test_shipped_base_matches_diffusers(base, hw):
    from diffusers import StableDiffusionPipeline
    H, W = hw
    d = _diffusers(StableDiffusionPipeline, toy.default_model_path("base"))
    theirs = d(PROMPTS, height=H, width=W, num_inference_steps=8, guidance_scale=7.5, negative_prompt=["a blue digit"] * 3,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    ours = base(PROMPTS, height=H, width=W, steps=8, guidance_scale=7.5, negative_prompt="a blue digit", seed=0,
                output_type="pt", progress=False)
    assert ours.shape == (3, 3, H, W)
    assert (ours - theirs).abs().max() <= TOL


def test_shipped_base_img2img_matches_diffusers(base):
    "The shipped folder as diffusers' StableDiffusionImg2ImgPipeline: the lesson's recolour edit gives our images."
    from diffusers import StableDiffusionImg2ImgPipeline
    d = _diffusers(StableDiffusionImg2ImgPipeline, toy.default_model_path("base"))
    x, *_ = toy._test_images(2, 0)
    ps = ["a yellow 7 on a blue background", "a purple 2"]
    theirs = d(ps, image=x, strength=0.6, num_inference_steps=10, guidance_scale=7.5,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    ours = base.img2img(ps, list(x[:, None]), strength=0.6, steps=10, guidance_scale=7.5, seed=0, output_type="pt", progress=False)
    assert ours.shape == (2, 3, 32, 32)
    assert (ours - theirs).abs().max() <= TOL


def _case(n=2):
    x, d, f, b, masks = toy._test_images(n, 0)
    return x, toy.background_masks(masks)


def test_shipped_inpainting_matches_diffusers(inpainting):
    from diffusers import StableDiffusionInpaintPipeline
    assert inpainting.unet_in_channels == 9
    d = _diffusers(StableDiffusionInpaintPipeline, toy.default_model_path("inpainting"))
    x, m = _case()
    ps = ["a red 7 on a green background", "a white 2 on a black background"]
    theirs = d(ps, image=x, mask_image=m, height=32, width=32, num_inference_steps=8, guidance_scale=7.5,
               generator=torch.Generator().manual_seed(1), output_type="pt").images
    ours = inpainting.inpaint(ps, list(x[:, None]), m, steps=8, guidance_scale=7.5, seed=1, output_type="pt", progress=False)
    assert (ours - theirs).abs().max() <= TOL


def test_load_default_kinds():
    assert toy.default_model_path("inpainting").name == "tiny-sd-inpainting"
    with pytest.raises(ValueError, match="inpainting"): toy.default_model_path("painting")


def test_partial_captions():
    assert toy.partial_caption(7, "red", "blue") == "a red 7 on a blue background"
    assert toy.partial_caption(7, "red", "blue", (1, 0, 0)) == "a 7"
    assert toy.partial_caption(7, "red", "blue", (0, 1, 0)) == "a red digit"
    assert toy.partial_caption(7, "red", "blue", (1, 0, 1)) == "a 7 on a blue background"
    assert toy.partial_caption(7, "red", "blue", (0, 0, 0)) == ""


def test_bucket_dataset_and_sampler_batches():
    from sd_from_scratch.data import BucketBatchSampler
    masks, labels = torch.rand(40, 32, 32), torch.arange(40) % 10
    ds = toy.BucketToyDataset(masks, labels, repeats=2, seed=3, jitter=None)          # the digit anywhere
    assert len(ds) == 80 and set(ds.sizes) <= set(toy.BUCKETS)
    for i in range(len(ds)):
        img, cap = ds[i]
        W, H = ds.sizes[i]
        assert img.shape == (3, H, W) and cap == ds.captions[i]
        assert torch.allclose(ds.canvas_mask(i).sum(), masks[ds.src[i]].sum())          # the whole digit is on the canvas
    for batch in BucketBatchSampler(ds.bucket_ids, 4, drop_last=True).batches():
        assert len({ds.sizes[i] for i in batch}) == 1
    # near the centre: the same buckets, captions and digits, each digit within `jitter` px of the centre
    near = toy.BucketToyDataset(masks, labels, repeats=2, seed=3, jitter=2)
    assert near.sizes == ds.sizes and near.captions == ds.captions
    for (W, H), (x, y) in zip(near.sizes, near.offsets):
        assert abs(x - (W - 32) // 2) <= 2 and abs(y - (H - 32) // 2) <= 2 and 0 <= x <= W - 32 and 0 <= y <= H - 32
    assert len({x for (W, H), (x, y) in zip(ds.sizes, ds.offsets) if W == 64}) > 5     # anywhere: offsets spread out
    assert len({x for (W, H), (x, y) in zip(near.sizes, near.offsets) if W == 64}) <= 5
    centred = toy.BucketToyDataset(masks, labels, repeats=2, seed=3)                    # the default: at the centre
    assert centred.sizes == ds.sizes and {(x, y) for (W, H), (x, y) in zip(centred.sizes, centred.offsets)} <= \
        {((W - 32) // 2, (H - 32) // 2) for W, H in toy.BUCKETS}


def test_random_masks_kinds():
    g = torch.Generator().manual_seed(0)
    dm = torch.zeros(64, 32, 48); dm[:, 10:20, 10:20] = 1
    m = toy.random_masks(dm, g)
    assert m.shape == (64, 1, 32, 48) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m.flatten(1).mean(1) == 1).any() and (m.flatten(1).mean(1) < 1).any()


def test_inpainting_unet_starts_as_the_base():
    from sd_from_scratch.unet import UNet2DConditionModel
    torch.manual_seed(0)
    u = UNet2DConditionModel.from_config(toy.TOY_UNET_CONFIG).eval()
    u9 = toy.inpainting_unet(u).eval()
    x, ctx, t = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32), torch.tensor([10, 500])
    extra = torch.randn(2, 5, 16, 16)
    assert u9.config["in_channels"] == 9
    torch.testing.assert_close(u9(torch.cat([x, extra], 1), t, ctx), u(x, t, ctx), atol=1e-5, rtol=1e-5)


def test_read_canvas_one_and_two_digits():
    clf = toy.load_digit_classifier()
    (Xte, yte) = toy.load_digits()["test"]
    pal = toy.palette_tensor()
    one = torch.zeros(1, 32, 64); one[0, :, 16:48] = Xte[0]
    two = torch.zeros(1, 32, 64); two[0, :, :32] = Xte[0]; two[0, :, 32:] = Xte[0]
    imgs = toy.render(torch.cat([one, two]), pal[[0, 0]], pal[[2, 2]])
    r = toy.read_canvas(imgs, clf)
    assert r["one"].tolist() == [True, False]
    assert int(r["digit"][0]) == int(yte[0]) and r["fg"].tolist() == [0, 0] and r["bg"].tolist() == [2, 2]


def test_attention_maps_contract(base):
    imgs, maps = base.attention_maps(["a red 7 on a blue background", "a cyan 3"], seed=0, steps=4, width=64, height=32,
                                     output_type="pt", progress=False)
    assert imgs.shape == (2, 3, 32, 64)
    assert [t for t, _ in maps[0]] == ["a", "red", "7", "on", "a", "blue", "background"]
    assert [t for t, _ in maps[1]] == ["a", "cy", "an", "3"]
    for m in maps:
        for t, a in m:
            assert a.shape == (32, 64) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    # the attention modules are left as they were
    from sd_from_scratch.attention import Attention
    assert not any(m.keep_weights or m.last_weights is not None for m in base.unet.modules() if isinstance(m, Attention))
    with pytest.raises(ValueError, match="num_images"): base.attention_maps("a 7", num_images=2)


_RESUME_CHILD = r'''
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from sd_from_scratch import toy
from sd_from_scratch.training import TrainConfig, make_accelerator, load_frozen
from sd_from_scratch.unet import UNet2DConditionModel
out, pause, weights = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3])
base = toy.default_model_path()
vae, te, tok, sched = load_frozen(base)
masks, labels = toy.load_digits()["train"]
ds = toy.BucketToyDataset(masks[:24], labels[:24], weights=weights, repeats=2, seed=0, jitter=toy.BUCKET_JITTER)

class Paused(toy.ToyTrainer):                      # stops (for good) after `pause` steps, so that it can be killed there
    def train_step(self):
        if self.step == pause:
            (Path(out) / "paused").write_text(str(self.step)); time.sleep(600)
        return super().train_step()

cfg = TrainConfig(out=out, data="toy-v2", seed=0, resume=True, progress=False, init_unet=True,
                  **{**toy.TOY2_TRAIN, "batch_size": 4, "max_steps": 6, "save_every": 2, "keep_last": 20})
Paused(cfg, ds, vae, te, tok, UNet2DConditionModel.from_pretrained(base / "unet"), sched, make_accelerator(cpu=True)).fit()
'''


def test_stage_4_resumes_bit_identically_after_kill_9(tmp_path):
    """Stage 4's trainer (ToyTrainer on the shipped buckets, the digit centred, fine-tuning the shipped UNet), 6 steps with a checkpoint
    every 2: killed with SIGKILL after step 3 (step 3 is lost), then resumed, it ends with exactly the weights, EMA and
    losses of an uninterrupted run."""
    import os, signal, subprocess, sys, time
    from pathlib import Path
    from safetensors.torch import load_file
    w = repr(toy.BUCKET_WEIGHTS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    def run(out, pause): return subprocess.Popen([sys.executable, "-c", _RESUME_CHILD, str(out), str(pause), w], env=env)
    a, b = tmp_path / "uninterrupted", tmp_path / "killed"
    pa, pb = run(a, -1), run(b, 3)
    t0 = time.time()
    while not (b / "paused").exists():
        assert pb.poll() is None and time.time() - t0 < 300, "the run to be killed ended before its pause"
        time.sleep(0.2)
    os.kill(pb.pid, signal.SIGKILL); pb.wait()
    assert pb.returncode == -signal.SIGKILL
    done = sorted(p.name for p in b.glob("checkpoint-*"))
    assert done == ["checkpoint-2"], done                                   # killed mid-way: steps 3–6 not written
    assert run(b, -1).wait() == 0 and pa.wait() == 0                        # resume the killed run to the end
    for f in ("unet.safetensors", "ema.safetensors"):
        x, y = load_file(a / "checkpoint-6" / f), load_file(b / "checkpoint-6" / f)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f
    import json
    sa, sb = (json.loads((d / "checkpoint-6" / "state.json").read_text()) for d in (a, b))
    assert sa["losses"] == sb["losses"] and len(sa["losses"]) == 6
    base = load_file(toy.default_model_path() / "unet" / "diffusion_pytorch_model.safetensors")
    assert not torch.equal(x["conv_in.weight"], base["conv_in.weight"])    # it did train
