"Heavier checks of `schedule` against diffusers' DDPMScheduler than the notebook's."
import pytest, torch
from hypothesis import given, settings, strategies as st
from diffusers import DDPMScheduler
from sd_from_scratch.schedule import make_betas, alphas_cumprod, add_noise, sigmas_from_alphas, karras_sigmas

KINDS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "squaredcos_cap_v2": (0.00085, 0.012)}

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [10, 1000])
def test_betas_and_alphas_match_diffusers(kind, n):
    b0, b1 = KINDS[kind]
    ref = DDPMScheduler(num_train_timesteps=n, beta_schedule=kind, beta_start=b0, beta_end=b1)
    betas = make_betas(kind, n, b0, b1)
    assert betas.dtype == torch.float32 and betas.shape == (n,)
    assert (betas - ref.betas).abs().max() <= 1e-6
    assert (alphas_cumprod(betas) - ref.alphas_cumprod).abs().max() <= 1e-6

@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(list(KINDS)), ts=st.lists(st.integers(0, 999), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_add_noise_matches_diffusers(kind, ts, seed):
    g = torch.Generator().manual_seed(seed)
    b0, b1 = KINDS[kind]
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind, beta_start=b0, beta_end=b1)
    x0, eps = torch.randn(len(ts), 4, 8, 8, generator=g), torch.randn(len(ts), 4, 8, 8, generator=g)
    t = torch.tensor(ts)
    ours = add_noise(x0, eps, t, alphas_cumprod(make_betas(kind, 1000, b0, b1)))
    assert (ours - ref.add_noise(x0, eps, t)).abs().max() <= 1e-6

def test_add_noise_scalar_t_and_errors():
    ab = alphas_cumprod(make_betas())
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.allclose(add_noise(x0, eps, 500, ab), add_noise(x0, eps, torch.tensor([500, 500]), ab))
    with pytest.raises(ValueError, match="same shape"): add_noise(x0, eps[:1], 0, ab)
    with pytest.raises(ValueError, match="unknown beta schedule"): make_betas("cosine")
    with pytest.raises(ValueError, match="n_steps"): make_betas(n_steps=0)

def test_sigmas_and_karras():
    sig = sigmas_from_alphas(alphas_cumprod(make_betas()))
    assert abs(sig[0].item() - 0.0292) < 1e-3 and abs(sig[-1].item() - 14.6146) < 1e-3
    ks = karras_sigmas(10, sig[0].item(), sig[-1].item())
    assert ks[0].item() == pytest.approx(sig[-1].item()) and ks[-1].item() == pytest.approx(sig[0].item())
    assert (ks[:-1] > ks[1:]).all()
