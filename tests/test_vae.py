"""AutoencoderKL vs diffusers (same random weights), loading/saving, tiling/slicing, errors, losses."""
import json
import pytest
import torch
import torch.nn.functional as F
from sd_from_scratch import vae as V
from sd_from_scratch import vae_training as T   # lesson 02a: the training kit

diffusers = pytest.importorskip("diffusers")

TINY = dict(block_out_channels=[8, 16, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=8, latent_channels=4,
            sample_size=32)


def _pair(cfg=TINY, tmp_path=None, seed=0):
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKL(**cfg).eval()
    ref.save_pretrained(tmp_path)
    return ref, V.AutoencoderKL.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _pair(tmp_path=tmp_path_factory.mktemp("tiny_vae"))


def _maxdiff(a, b): return (a - b).abs().max().item()


@torch.no_grad()
def test_encoder_decoder_parity(pair):
    ref, ours = pair
    torch.manual_seed(1)
    x = torch.rand(3, 3, 48, 64) * 2 - 1
    dp, op = ref.encode(x).latent_dist, ours.encode(x)
    assert _maxdiff(dp.mean, op.mean) <= 1e-4
    assert _maxdiff(dp.std, op.std) <= 1e-4
    assert _maxdiff(dp.var, op.var) <= 1e-4
    assert torch.allclose(dp.kl(), op.kl(), rtol=1e-4)
    z = torch.randn(3, 4, 6, 8)
    assert _maxdiff(ref.decode(z).sample, ours.decode(z)) <= 1e-4
    assert _maxdiff(ref(x).sample, ours(x)) <= 1e-4


@torch.no_grad()
def test_sample_draws_noise_like_diffusers(pair):
    ref, ours = pair
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    dp, op = ref.encode(x).latent_dist, ours.encode(x)
    a = dp.sample(torch.Generator().manual_seed(42))
    b = op.sample(torch.Generator().manual_seed(42))
    assert _maxdiff(a, b) <= 1e-5
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]
    assert _maxdiff(dp.sample(gens()), op.sample(gens())) <= 1e-5
    # the generator is left in the same state (same number of draws)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    dp.sample(g1); op.sample(g2)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
    from diffusers.utils.torch_utils import randn_tensor
    for shape, dt in (((2, 4, 5, 3), torch.float32), ((1, 4, 8, 8), torch.float64)):
        assert torch.equal(randn_tensor(shape, generator=torch.Generator().manual_seed(0), dtype=dt),
                           V.randn_tensor(shape, generator=torch.Generator().manual_seed(0), dtype=dt))


def test_gradients_match(pair):
    ref, ours = pair
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for m in (ref, ours): m.zero_grad()
    (ref(x).sample ** 2).mean().backward()
    (ours(x) ** 2).mean().backward()
    theirs = dict(ref.named_parameters())
    for n, p in ours.named_parameters():
        g = theirs[n].grad
        assert (p.grad - g).abs().max() <= 1e-4 * (1 + g.abs().max()), n
    for m in (ref, ours): m.zero_grad()


def test_state_dict_keys_identical(pair):
    ref, ours = pair
    assert list(ref.state_dict()) == list(ours.state_dict()) or set(ref.state_dict()) == set(ours.state_dict())


@torch.no_grad()
def test_diffusers_loads_what_we_save(pair, tmp_path):
    _, ours = pair
    ours.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["_class_name"] == "AutoencoderKL" and cfg["scaling_factor"] == pytest.approx(0.18215)
    theirs = diffusers.AutoencoderKL.from_pretrained(tmp_path).eval()
    x = torch.rand(1, 3, 40, 24) * 2 - 1
    assert _maxdiff(theirs(x).sample, ours(x)) <= 1e-4


@torch.no_grad()
def test_tiling_matches_diffusers_and_is_close_to_untiled(pair):
    ref, ours = pair
    ref.enable_tiling(); ours.enable_tiling()
    try:
        z = torch.randn(1, 4, 11, 13)                 # not a multiple of the tile size: ragged edge tiles
        x = torch.rand(2, 3, 72, 104) * 2 - 1
        assert _maxdiff(ref.decode(z).sample, ours.decode(z)) <= 1e-4
        assert _maxdiff(ref.encode(x).latent_dist.mean, ours.encode(x).mean) <= 1e-4
        tiled = ours.decode(z)
    finally:
        ref.disable_tiling(); ours.disable_tiling()
    assert tiled.shape == ours.decode(z).shape


@torch.no_grad()
def test_slicing_is_exact(pair):
    _, ours = pair
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = torch.randn(3, 4, 4, 4)
    full_e, full_d = ours.encode(x).mean, ours.decode(z)
    ours.enable_slicing()
    try:
        assert _maxdiff(ours.encode(x).mean, full_e) <= 1e-5
        assert _maxdiff(ours.decode(z), full_d) <= 1e-5
    finally:
        ours.disable_slicing()


@torch.no_grad()
def test_tiled_close_to_untiled_with_the_shipped_tiny_vae():
    "With trained weights (random ones are not smooth enough to say anything) tiling barely changes the picture."
    from pathlib import Path
    from sd_from_scratch.images import pil_to_tensor, sample_image
    m = V.AutoencoderKL.from_pretrained(Path(__file__).resolve().parents[1] / "data" / "tiny_photo_vae")
    x = pil_to_tensor(sample_image("coffee", 256))
    z = m.encode(x).mode()
    full = m.decode(z)
    m.enable_tiling(tile_sample_size=128)
    tiled, z_tiled = m.decode(z), m.encode(x).mode()
    assert tiled.shape == full.shape and z_tiled.shape == z.shape
    assert (tiled - full).abs().mean() < 0.15                     # pixels in [-1, 1]
    assert (z_tiled - z).abs().mean() < 0.2 * z.abs().mean()


def test_upsample_trick_matches_interpolate_conv():
    torch.manual_seed(0)
    for H, W in ((1, 1), (3, 5), (8, 8)):
        x = torch.randn(2, 6, H, W, requires_grad=True)
        conv = torch.nn.Conv2d(6, 5, 3, padding=1)
        a = V.upsample_conv(x, conv.weight, conv.bias)
        b = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        assert a.shape == b.shape == (2, 5, 2 * H, 2 * W)
        assert _maxdiff(a, b) <= 1e-5
        ga = torch.autograd.grad(a.square().sum(), x)[0]
        gb = torch.autograd.grad(b.square().sum(), x)[0]
        assert _maxdiff(ga, gb) <= 1e-4


def test_clear_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="multiples of 8"): ours.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="expects 3 channels"): ours.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="channels-last"): ours.encode(torch.zeros(1, 32, 32, 3))
    with pytest.raises(ValueError, match="B×3×H×W"): ours.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="latents B×4"): ours.decode(torch.zeros(1, 3, 4, 4))
    sd = ours.state_dict()
    bad = {k: v for k, v in sd.items() if k != "quant_conv.bias"} | {"extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError) as e: ours.load_weights(bad)
    assert "quant_conv.bias" in str(e.value) and "extra.weight" in str(e.value)
    bad = dict(sd); bad["post_quant_conv.weight"] = torch.zeros(2, 2, 1, 1)
    with pytest.raises(ValueError, match="shape mismatches"): ours.load_weights(bad)
    with pytest.raises(ValueError, match="norm_num_groups"): V.AutoencoderKL(block_out_channels=[30], norm_num_groups=32)
    with pytest.raises(TypeError, match="unknown"): V.AutoencoderKL(blocks=3)


def test_from_pretrained_folders(pair, tmp_path):
    ref, _ = pair
    ref.save_pretrained(tmp_path / "pipe" / "vae")
    m = V.AutoencoderKL.from_pretrained(tmp_path / "pipe")                  # a pipeline folder: finds vae/
    m16 = V.AutoencoderKL.from_pretrained(tmp_path / "pipe", subfolder="vae", dtype=torch.float64)
    assert m16.dtype == torch.float64 and not m.training
    with pytest.raises(FileNotFoundError, match="config.json"): V.AutoencoderKL.from_pretrained(tmp_path)


def test_old_attention_names_convert(pair):
    _, ours = pair
    sd = ours.state_dict()
    old = {}
    for k, v in sd.items():
        k2 = (k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value").replace("to_out.0", "proj_attn"))
        old[k2] = v[:, :, None, None] if k2 != k and k.endswith("weight") else v
    assert set(old) != set(sd)
    m = V.AutoencoderKL.from_config(TINY).load_weights(old)
    for k, v in m.state_dict().items(): assert torch.equal(v, sd[k]), k


def test_losses_and_discriminator():
    torch.manual_seed(0)
    m = V.AutoencoderKL.from_config(TINY)
    disc = T.PatchDiscriminator(3, ch=16, n_layers=2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    post = m.encode(x); recon = m.decode(post.sample())
    total, logs = T.vae_loss(x, recon, post, perceptual=T.FeatureNet(), disc=disc, last_layer=m.decoder.conv_out.weight)
    assert torch.isfinite(total) and {"l1", "perceptual", "kl", "g_loss", "d_weight"} <= set(logs)
    total.backward()
    assert m.encoder.conv_in.weight.grad is not None
    assert disc(x).shape[:2] == (2, 1)
    d = T.disc_loss(disc, x, recon)
    assert d.item() >= 0
    # hinge: confident and correct discriminator → 0; perfect reconstruction + no extras → just the KL term
    assert T.hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0
    t, l = T.vae_loss(x, x, post, kl_weight=1.0)
    assert torch.allclose(t, post.kl().sum() / 2)
    assert T.perceptual_loss(x, x, T.FeatureNet()).abs().max() < 1e-6


def test_training_reduces_loss():
    torch.manual_seed(0)
    m = V.AutoencoderKL.from_config(TINY)
    imgs = torch.rand(2, 3, 48, 48) * 2 - 1
    imgs = F.avg_pool2d(imgs, 5, 1, 2)                      # something smooth enough to learn quickly
    hist = T.train_vae(m, imgs, steps=12, batch_size=2, crop=32, disc_start=8, log_every=1)
    assert hist[-1]["l1"] < hist[0]["l1"]


def test_vector_quantizer():
    torch.manual_seed(0)
    vq = T.VectorQuantizer(8, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    zq, loss, idx = vq(z)
    assert zq.shape == z.shape and idx.shape == (2, 3, 3) and loss.item() > 0
    d = ((z.detach().permute(0, 2, 3, 1)[..., None, :] - vq.embedding.weight) ** 2).sum(-1)
    assert torch.equal(idx, d.argmin(-1))
    zq.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


@pytest.mark.slow
@torch.no_grad()
def test_full_sd15_config_parity(tmp_path):
    cfg = {k: v for k, v in V.SD_VAE_CONFIG.items() if not k.startswith("_")}
    ref, ours = _pair(cfg, tmp_path)
    assert sum(p.numel() for p in ours.parameters()) == 83_653_863 == sum(p.numel() for p in ref.parameters())
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    dp, op = ref.encode(x).latent_dist, ours.encode(x)
    assert _maxdiff(dp.mean, op.mean) <= 1e-4 and _maxdiff(dp.std, op.std) <= 1e-4
    z = torch.randn(1, 4, 16, 16)
    assert _maxdiff(ref.decode(z).sample, ours.decode(z)) <= 1e-4
