"FID parity with the reference (scipy sqrtm) formula, CLIP score, and the guidance sweep plot."
import warnings
import numpy as np
import pytest
import torch
from sd_from_scratch.metrics import (CLIPScorer, GaussianGuidanceWorld, RandomConvFeatures, clip_score, compute_features,
                                     feature_stats, fid, frechet_distance, guidance_sweep, run_sweep, sqrtm_psd, sweep,
                                     sweep_main)

scipy_linalg = pytest.importorskip("scipy.linalg")

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: torch pinned to 1 thread

def reference_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    "pytorch-fid's calculate_frechet_distance (scipy sqrtm of the product, eps·I retry, real part)."
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy_linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy_linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(np.real(covmean))

@pytest.mark.parametrize("d", [1, 3, 32, 128])
@pytest.mark.parametrize("n_factor", [0.5, 1.0, 4.0])
def test_fid_matches_scipy_reference(d, n_factor):
    rng = np.random.default_rng(d * 10 + int(n_factor * 2))
    n = max(2, int(d * n_factor) + 1)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))               # correlated features
    b = rng.normal(size=(n + 7, d)) * 0.7 + rng.normal(size=d)
    ours = fid(a, b)
    ref = reference_frechet_distance(*feature_stats(a), *feature_stats(b))
    assert abs(ours - ref) < 1e-3, (ours, ref)

def test_fid_low_rank_features():
    "Features living in a 5-d subspace of 64-d (rank-deficient covariances even with many samples)."
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(5, 64))
    a, b = rng.normal(size=(400, 5)) @ basis, (rng.normal(size=(300, 5)) * 1.2) @ basis + 0.1
    ours, ref = fid(a, b), reference_frechet_distance(*feature_stats(a), *feature_stats(b))
    assert abs(ours - ref) < 1e-3, (ours, ref)

def test_frechet_closed_forms_and_tensors():
    assert abs(frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) - 5.0) < 1e-12
    # diagonal covariances: sum over dims of (m1-m2)² + (s1-s2)²
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    m1, m2 = np.zeros(3), np.array([1.0, 0, 2.0])
    want = ((m1 - m2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert abs(frechet_distance(torch.tensor(m1), torch.diag(torch.tensor(s1)), m2, np.diag(s2)) - want) < 1e-10
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N ≥ 2"):
        feature_stats(np.zeros((1, 4)))

def test_sqrtm_psd_squares_back():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 6)); c = x.T @ x
    r = sqrtm_psd(c)
    np.testing.assert_allclose(r @ r, c, atol=1e-9)
    np.testing.assert_allclose(r, r.T, atol=1e-12)

def test_eps_offset_like_pytorch_fid():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(10, 20)), rng.normal(size=(10, 20))
    (m1, c1), (m2, c2) = feature_stats(a), feature_stats(b)
    e = 1e-6
    ours = frechet_distance(m1, c1, m2, c2, eps=e)
    I = np.eye(20) * e
    covmean = scipy_linalg.sqrtm((c1 + I) @ (c2 + I)).real
    ref = (m1 - m2) @ (m1 - m2) + np.trace(c1 + I) + np.trace(c2 + I) - 2 * np.trace(covmean)
    assert abs(ours - ref) < 1e-3

def test_fid_sensible_on_digits():
    from sklearn.datasets import load_digits
    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    fx = RandomConvFeatures(seed=0)
    real, held = compute_features(x[perm[:600]], fx), compute_features(x[perm[600:1200]], fx)
    noise = compute_features(torch.rand(600, 1, 8, 8, generator=g) * 2 - 1, fx)
    assert real.dtype == np.float64 and real.shape == (600, fx.dim)
    assert 10 * fid(real, held) < fid(real, noise)

def test_feature_extractor_is_fixed_by_seed():
    x = torch.rand(4, 3, 40, 24) * 2 - 1
    torch.testing.assert_close(RandomConvFeatures(seed=3)(x), RandomConvFeatures(seed=3)(x))
    assert not torch.allclose(RandomConvFeatures(seed=3)(x), RandomConvFeatures(seed=4)(x))

def test_clip_score_definition():
    i, t = torch.randn(5, 7), torch.randn(5, 7)
    cos = torch.nn.functional.cosine_similarity(i.double(), t.double())
    assert abs(clip_score(i, t) - max(100 * cos.mean().item(), 0)) < 1e-9
    torch.testing.assert_close(clip_score(i, t, per_pair=True), (100 * cos).clamp(min=0))
    assert clip_score(i, -i) == 0.0
    with pytest.raises(ValueError, match="pair up"):
        clip_score(i, t[:4])

def test_clip_score_with_transformers_clip(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4), projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(tmp_path)
    hf = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    def emb(o): return o if isinstance(o, torch.Tensor) else o.pooler_output
    scorer = CLIPScorer(lambda x: emb(hf.get_image_features(pixel_values=x)), lambda ids: emb(hf.get_text_features(input_ids=ids)))
    pixels, ids = torch.randn(8, 3, 32, 32), torch.randint(3, 98, (8, 9))
    with torch.no_grad():
        cos = hf(input_ids=ids, pixel_values=pixels).logits_per_image.diagonal() / hf.logit_scale.exp()
    torch.testing.assert_close(scorer(pixels, ids, per_pair=True), (100 * cos).clamp(min=0).double(), atol=1e-4, rtol=0)
    assert abs(scorer(pixels, ids) - max(100 * cos.mean().item(), 0)) < 1e-4
    with pytest.raises(ValueError, match="one text per image"):
        scorer(pixels, ids[:3])

def test_sweep_with_cheap_stand_in():
    "Any callables work: a stand-in whose 'images' are shifted noise; FID grows with the shift, CLIP is the shift itself."
    real = np.random.default_rng(0).normal(size=(200, 4))
    def sample_fn(prompts, seed=0, guidance_scale=1.0):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(len(prompts), 4, generator=g, dtype=torch.float64) + guidance_scale
    rows = guidance_sweep(sample_fn, list(range(200)), real, lambda x: x, lambda x, p: float(x.mean()), scales=(0, 1, 2))
    assert [r["guidance_scale"] for r in rows] == [0, 1, 2]
    fids = [r["fid"] for r in rows]
    assert fids[0] < fids[1] < fids[2]
    assert rows[2]["clip_score"] > rows[1]["clip_score"] > rows[0]["clip_score"]
    # images as a B×C×H×W tensor go through compute_features
    fx = RandomConvFeatures(seed=0)
    def img_fn(prompts, seed=0, steps=4): return torch.zeros(len(prompts), 3, 16, 16) + 0.1 * steps
    rows = sweep(img_fn, [0] * 6, compute_features(torch.zeros(6, 3, 16, 16) + 0.1, fx) + np.random.default_rng(0).normal(size=(6, fx.dim)) * 1e-3,
                 fx, lambda x, p: 0.0, param="steps", values=(1, 5))
    assert rows[0]["fid"] < rows[1]["fid"]

def test_gaussian_world_tradeoff():
    "The stand-in reproduces the seed's shape: FID minimum at moderate w, CLIP score rising with w."
    world = GaussianGuidanceWorld()
    prompts = torch.arange(400) % 4
    rows = guidance_sweep(world.sample, prompts, world.real(prompts), lambda x: x, world.clip, scales=(1, 3, 11))
    f = {r["guidance_scale"]: r["fid"] for r in rows}; c = {r["guidance_scale"]: r["clip_score"] for r in rows}
    assert f[3] < f[1] and f[3] < f[11]
    assert c[1] < c[3] < c[11]
    assert torch.equal(world.sample(prompts[:8], 3.0, steps=10, seed=5), world.sample(prompts[:8], 3.0, steps=10, seed=5))
    with pytest.raises(ValueError, match="unknown sampler"):
        world.sample(prompts[:2], sampler="plms")

def test_run_sweep_writes_plot_and_csv(tmp_path):
    import argparse, csv, time
    rows = sweep_main(argparse.Namespace(out=str(tmp_path / "sub" / "sweep.png"), world="standin", scales=["1", "3", "7.5"],
                                         n=120, seed=0, steps=20))
    png = tmp_path / "sub" / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    got = list(csv.DictReader(open(tmp_path / "sub" / "sweep.csv")))
    assert [float(r["guidance_scale"]) for r in got] == [1.0, 3.0, 7.5] == [r["guidance_scale"] for r in rows]
    with pytest.raises(ValueError, match="also needs"):
        run_sweep(tmp_path / "x.png", sample_fn=lambda p, **k: p)
    with pytest.raises(ValueError, match="unknown world"):
        run_sweep(tmp_path / "y.png", world="coco")

def test_sweep_on_the_shipped_tiny_model(tmp_path):
    "The default world is the shipped tiny model: FID, toy-CLIP score and alignment per scale; guidance helps alignment."
    import argparse, csv
    rows = sweep_main(argparse.Namespace(out=str(tmp_path / "toy.png"), scales=["1", "7.5"], n=40, seed=0, steps=8))
    got = list(csv.DictReader(open(tmp_path / "toy.csv")))
    assert list(got[0]) == ["guidance_scale", "fid", "clip_score", "alignment"] and len(got) == 2
    assert rows[1]["alignment"] > rows[0]["alignment"] and rows[1]["clip_score"] > rows[0]["clip_score"]

@pytest.mark.slow
def test_fid_inception_size_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3000, 2048)), rng.normal(size=(2500, 2048)) * 1.1 + 0.02
    ours, ref = fid(a, b), reference_frechet_distance(*feature_stats(a), *feature_stats(b))
    assert abs(ours - ref) < 1e-3, (ours, ref)

def _tiny_hf_clip(tmp_path, image_size=32, patch=8):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(image_size=image_size, patch_size=patch, hidden_size=48, intermediate_size=37, num_hidden_layers=3,
                           num_attention_heads=4), projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(tmp_path)
    return transformers.CLIPModel.from_pretrained(tmp_path).eval()

def test_clip_model_from_pretrained_matches_transformers(tmp_path):
    from sd_from_scratch.clip import CLIPModel, clip_preprocess
    hf = _tiny_hf_clip(tmp_path, image_size=40, patch=10)
    ours = CLIPModel.from_pretrained(tmp_path)
    def emb(o): return o if isinstance(o, torch.Tensor) else o.pooler_output
    px, ids = torch.randn(3, 3, 40, 40), torch.randint(3, 98, (3, 11))
    ids[1, 5] = 2                                              # an end token mid-sequence
    with torch.no_grad():
        torch.testing.assert_close(ours.get_image_features(px), emb(hf.get_image_features(pixel_values=px)), atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.get_text_features(ids), emb(hf.get_text_features(input_ids=ids)), atol=1e-4, rtol=0)
        images = torch.rand(3, 3, 64, 96) * 2 - 1
        score = ours.scorer()(images, ids)
        cos = torch.nn.functional.cosine_similarity(emb(hf.get_image_features(pixel_values=clip_preprocess(images, 40))),
                                                    emb(hf.get_text_features(input_ids=ids)))
    assert abs(score - max(100 * cos.mean().item(), 0)) < 1e-3
    assert clip_preprocess(images, 40).shape == (3, 3, 40, 40)
    (tmp_path / "config.json").write_text('{"model_type": "clip_text_model"}')
    with pytest.raises(ValueError, match="vision_config"):
        CLIPModel.from_pretrained(tmp_path)

def test_pipeline_sample_fn_batches_and_seeds():
    from sd_from_scratch.metrics import pipeline_sample_fn
    calls = []
    def pipe(prompts, generator=None, output_type="pil", guidance_scale=7.5, steps=50):
        assert output_type == "pt"
        calls.append((len(prompts), guidance_scale, steps))
        return torch.rand(len(prompts), 3, 8, 8, generator=generator)
    fn = pipeline_sample_fn(pipe, batch_size=4, steps=5)
    a = fn(list("abcdefghij"), seed=1, guidance_scale=2.0)
    assert a.shape == (10, 3, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert calls == [(4, 2.0, 5), (4, 2.0, 5), (2, 2.0, 5)]
    torch.testing.assert_close(fn(list("abcdefghij"), seed=1, guidance_scale=2.0), a)
    assert not torch.equal(a[:4], a[4:8])          # batches draw fresh noise from one generator

def test_frechet_is_symmetric_and_nonnegative():
    from hypothesis import given, settings, strategies as st
    @settings(max_examples=40, deadline=None)
    @given(d=st.integers(1, 12), n1=st.integers(2, 30), n2=st.integers(2, 30), seed=st.integers(0, 10_000),
           scale=st.floats(1e-3, 1e3))
    def check(d, n1, n2, seed, scale):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(size=(n1, d)) * scale, rng.normal(size=(n2, d)) * scale + rng.normal(size=d)
        ab, ba = fid(a, b), fid(b, a)
        tol = 1e-7 * scale ** 2 * d + 1e-9
        assert ab > -tol and abs(ab - ba) <= 1e-6 * max(1.0, abs(ab))
        assert abs(fid(a, a)) <= tol
    check()


def test_fid_of_a_set_with_itself_is_zero_not_negative():
    "More features than samples: Σ is singular and the trace of sqrt(Σ·Σ) comes out a hair too large; FID clamps at 0."
    import numpy as np
    from sd_from_scratch.metrics import fid, frechet_distance
    for seed in range(5):
        f = np.random.default_rng(seed).standard_normal((20, 64))
        d = fid(f, f)
        assert d >= 0 and abs(d) < 1e-6, d
    assert frechet_distance(np.zeros(3), np.eye(3), np.ones(3), np.eye(3)) == pytest.approx(3.0)

def test_digit_features_separate_digits_and_colours():
    "The trained judge's features: real toy images for the same prompts are close, wrong colours or wrong digits are far."
    from sd_from_scratch import toy
    from sd_from_scratch.metrics import DigitFeatures, toy_real_images
    fx = DigitFeatures()
    _, d, f, b = toy.eval_prompts(60, seed=3)
    a, same = toy_real_images(d, f, b, per_prompt=4, seed=0), toy_real_images(d, f, b, per_prompt=4, seed=1)
    assert a.shape == (240, 3, 32, 32) and a.min() >= -1 and a.max() <= 1 and fx.dim == 70
    wrong_ink = toy_real_images(d, (f + 1) % len(toy.COLOURS), b, per_prompt=4, seed=1)
    wrong_digit = toy_real_images((d + 1) % 10, f, b, per_prompt=4, seed=1)
    fa = compute_features(a, fx)
    near = fid(fa, compute_features(same, fx))
    assert near * 5 < fid(fa, compute_features(wrong_ink, fx)) and near * 2 < fid(fa, compute_features(wrong_digit, fx))

def test_toy_sweep_seeds_reports_mean_and_spread():
    from sd_from_scratch.metrics import toy_sweep_seeds, toy_sweep_setup
    rows = toy_sweep_seeds(scales=(1.0, 7.5), seeds=(0, 1), n=12, steps=4)
    assert [r["guidance_scale"] for r in rows] == [1.0, 7.5] and all(r["seeds"] == 2 for r in rows)
    assert all(r["fid_std"] >= 0 and r["clip_score_std"] >= 0 and np.isfinite(r["fid"]) for r in rows)
    with pytest.raises(ValueError, match="features"):
        toy_sweep_setup(n=4, features="inception")
