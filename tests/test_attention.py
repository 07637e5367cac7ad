"Attention module: parity with diffusers' Attention, backends agree, masks, clear errors."
import pytest, torch
from sd_from_scratch.attention import Attention, attention_naive, attention_sliced, mask_to_bias, ATTENTION_BACKENDS

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: torch pinned to 1 thread

@pytest.mark.parametrize("context_dim", [None, 12])
def test_matches_diffusers(context_dim):
    from diffusers.models.attention_processor import Attention as DAttention
    torch.manual_seed(0)
    theirs = DAttention(query_dim=24, cross_attention_dim=context_dim, heads=3, dim_head=8).eval()
    ours = Attention(24, context_dim, heads=3, dim_head=8).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 30, 24)
    ctx = None if context_dim is None else torch.randn(2, 9, context_dim)
    with torch.no_grad():
        ref = theirs(x, encoder_hidden_states=ctx)
        for b in ATTENTION_BACKENDS:
            assert (ours.set_backend(b, slice_size=7)(x, ctx) - ref).abs().max() <= 1e-5

def test_masked_matches_diffusers():
    from diffusers.models.attention_processor import Attention as DAttention
    torch.manual_seed(1)
    theirs = DAttention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()
    ours = Attention(16, 8, heads=2, dim_head=8).eval(); ours.load_state_dict(theirs.state_dict())
    x, ctx = torch.randn(2, 10, 16), torch.randn(2, 6, 8)
    bias = mask_to_bias(torch.tensor([[1, 1, 0, 0, 0, 0], [1] * 6]))
    with torch.no_grad():
        assert (theirs(x, encoder_hidden_states=ctx, attention_mask=bias) - ours(x, ctx, mask=bias)).abs().max() <= 1e-5
        ours.keep_weights = True; ours(x, ctx, mask=bias)
    assert ours.last_weights[0, ..., 2:].max() < 1e-6

def test_naive_sliced_sdpa_agree_and_weights_sum_to_one():
    q, k, v = torch.randn(2, 4, 50, 8), torch.randn(2, 4, 13, 8), torch.randn(2, 4, 13, 8)
    o, w = attention_naive(q, k, v, return_weights=True)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 50), atol=1e-6)
    assert torch.allclose(o, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
    assert torch.allclose(o, attention_sliced(q, k, v, slice_size=7), atol=1e-6)

def test_upcast_fp16_naive():
    q, k, v = (torch.randn(1, 2, 16, 8, dtype=torch.float16) for _ in range(3))
    o = attention_naive(q, k, v, upcast=True)
    assert o.dtype == torch.float16
    assert torch.allclose(o.float(), attention_naive(q.float(), k.float(), v.float()), atol=1e-2)

def test_bad_backend_message():
    with pytest.raises(ValueError, match="unknown attention backend"):
        Attention(8, heads=2, dim_head=4).set_backend("flash")
