"""UNet2DConditionModel: same weights → same ε as diffusers (tiny configs fast, full SD v1.5 config slow),
loading/saving in diffusers' folder format, config handling, switches."""
import copy, json, os
from pathlib import Path
import pytest, torch
from sd_from_scratch.unet import (UNet2DConditionModel, SD15_UNET_CONFIG, SD15_INPAINT_UNET_CONFIG, SD21_UNET_CONFIG,
                                  tiny_unet_config, count_params, load_strict, resolve_unet_config, timestep_embedding)

TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: torch pinned to 1 thread
SD2_TINY = tiny_unet_config(block_out_channels=[32, 64, 64], layers_per_block=2, attention_head_dim=[2, 4, 4],
                            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                            cross_attention_dim=24, use_linear_projection=True, upcast_attention=True,
                            transformer_layers_per_block=2)
CONFIGS = {"sd1_tiny": tiny_unet_config(), "sd2_tiny": SD2_TINY, "inpaint_tiny": tiny_unet_config(in_channels=9),
           "sd1_tiny_3levels_center": tiny_unet_config(block_out_channels=[32, 32, 64], attention_head_dim=4,
               down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
               up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], center_input_sample=True,
               freq_shift=1, flip_sin_to_cos=False)}

def diffusers_pair(config, tmp_path, seed=0):
    from diffusers import UNet2DConditionModel as D
    torch.manual_seed(seed)
    theirs = D(**config).eval()
    theirs.save_pretrained(tmp_path)
    return theirs, UNet2DConditionModel.from_pretrained(tmp_path)

def inputs(config, B=2, H=16, W=16, L=7):
    return torch.randn(B, config["in_channels"], H, W), torch.randn(B, L, config["cross_attention_dim"])

@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_tiny(name, tmp_path):
    cfg = CONFIGS[name]
    theirs, ours = diffusers_pair(cfg, tmp_path)
    x, ctx = inputs(cfg)
    with torch.no_grad():
        for t in (0, 999, 421.5, torch.tensor(7), torch.tensor([3, 800])):
            d = (theirs(x, t, ctx).sample - ours(x, t, ctx)).abs().max().item()
            assert d <= TOL, f"{name} t={t}: max |Δ| = {d}"

def test_parity_odd_sizes_and_mask(tmp_path):
    cfg = CONFIGS["sd1_tiny"]
    theirs, ours = diffusers_pair(cfg, tmp_path)
    x, ctx = inputs(cfg, H=20, W=12)
    m = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7])
    with torch.no_grad():
        assert (theirs(x, 5, ctx).sample - ours(x, 5, ctx)).abs().max() <= TOL
        assert (theirs(x, 5, ctx, encoder_attention_mask=m).sample - ours(x, 5, ctx, m)).abs().max() <= TOL
        x3, _ = inputs(cfg, H=18, W=10)
        assert ours(x3, 5, ctx).shape == x3.shape

def test_feed_forward_chunking_is_exact(tmp_path, monkeypatch):
    from sd_from_scratch.unet import BasicTransformerBlock
    cfg = CONFIGS["sd2_tiny"]
    theirs, ours = diffusers_pair(cfg, tmp_path)
    x, ctx = inputs(cfg)
    monkeypatch.setattr(BasicTransformerBlock, "ff_chunk", 7)           # many ragged chunks
    with torch.no_grad(): assert (theirs(x, 5, ctx).sample - ours(x, 5, ctx)).abs().max() <= TOL

def test_parity_with_grad_and_checkpointing(tmp_path):
    cfg = CONFIGS["sd1_tiny"]
    theirs, ours = diffusers_pair(cfg, tmp_path)
    x, ctx = inputs(cfg)
    ref = theirs(x, 10, ctx).sample
    ours.train()
    out = ours(x, 10, ctx)
    assert (ref - out).abs().max() <= TOL
    out.pow(2).mean().backward()
    g = [p.grad.clone() for p in ours.parameters()]
    ours.zero_grad(); ours.enable_gradient_checkpointing()
    assert ours.is_gradient_checkpointing
    ours(x, 10, ctx).pow(2).mean().backward()
    for a, b in zip(g, (p.grad for p in ours.parameters())): assert torch.allclose(a, b, atol=1e-6)

def test_attention_backends_agree():
    torch.manual_seed(0)
    m = UNet2DConditionModel.from_config(tiny_unet_config()).eval()
    x, ctx = inputs(m.config)
    with torch.no_grad():
        ref = m(x, 3, ctx)
        for b in ("naive", "sliced"): assert (m.set_attention_backend(b, slice_size=30)(x, 3, ctx) - ref).abs().max() <= 1e-5
        assert (m.set_attention_slice("max")(x, 3, ctx) - ref).abs().max() <= 1e-5
        m.set_attention_slice(None)

def test_diffusers_loads_what_we_save(tmp_path):
    from diffusers import UNet2DConditionModel as D
    torch.manual_seed(0)
    ours = UNet2DConditionModel.from_config(SD2_TINY).eval()
    ours.save_pretrained(tmp_path)
    theirs = D.from_pretrained(tmp_path).eval()
    x, ctx = inputs(SD2_TINY)
    with torch.no_grad(): assert (theirs(x, 50, ctx).sample - ours(x, 50, ctx)).abs().max() <= TOL
    back = UNet2DConditionModel.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), back.state_dict().values()))

def test_fp16_variant_and_dtypes(tmp_path):
    torch.manual_seed(0)
    ours = UNet2DConditionModel.from_config(tiny_unet_config()).eval()
    copy.deepcopy(ours).half().save_pretrained(tmp_path, variant="fp16")
    with pytest.raises(FileNotFoundError, match="variant='fp16'"): UNet2DConditionModel.from_pretrained(tmp_path)
    m32 = UNet2DConditionModel.from_pretrained(tmp_path, variant="fp16")
    m16 = UNet2DConditionModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    assert m32.dtype == torch.float32 and m16.dtype == torch.float16
    x, ctx = inputs(ours.config)
    with torch.no_grad(): assert (m32(x, 5, ctx) - ours(x, 5, ctx)).abs().max() < 2e-2

def test_pipeline_folder_subfolder(tmp_path):
    UNet2DConditionModel.from_config(tiny_unet_config()).save_pretrained(tmp_path / "unet")
    with pytest.raises(FileNotFoundError, match="subfolder='unet'"): UNet2DConditionModel.from_pretrained(tmp_path)
    assert UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet").config["block_out_channels"] == [32, 64]

def test_strict_loading_lists_keys():
    with torch.device("meta"): m = UNet2DConditionModel(tiny_unet_config())
    sd = UNet2DConditionModel.from_config(tiny_unet_config()).state_dict()
    sd["extra.weight"] = sd.pop("conv_out.weight")
    with pytest.raises(ValueError) as e: load_strict(m, sd)
    assert "missing keys (1): conv_out.weight" in str(e.value) and "unexpected keys (1): extra.weight" in str(e.value)

def test_config_errors():
    with pytest.raises(NotImplementedError, match="unsupported config"):
        resolve_unet_config({**SD15_UNET_CONFIG, "addition_embed_type": "text_time"})
    with pytest.raises(ValueError, match="num_attention_heads"):
        resolve_unet_config({**SD15_UNET_CONFIG, "num_attention_heads": 8})
    with pytest.raises(NotImplementedError, match="down block type"):
        resolve_unet_config({**SD15_UNET_CONFIG, "down_block_types": ["AttnDownBlock2D"] * 4})
    m = UNet2DConditionModel.from_config(tiny_unet_config())
    with pytest.raises(ValueError, match="one value per sample"): m(torch.randn(2, 4, 8, 8), torch.tensor([1, 2, 3]), torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="context"): m(torch.randn(2, 4, 8, 8), 1)

def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding
    t = torch.tensor([0., 1.5, 999.])
    for flip, shift, dim in [(True, 0, 320), (False, 1, 33)]:
        assert torch.allclose(timestep_embedding(t, dim, flip, shift), get_timestep_embedding(t, dim, flip, shift), atol=1e-5)

@pytest.mark.parametrize("cfg,expected", [(SD15_UNET_CONFIG, 859_520_964), (SD15_INPAINT_UNET_CONFIG, None), (SD21_UNET_CONFIG, None)])
def test_param_counts_on_meta(cfg, expected):
    from diffusers import UNet2DConditionModel as D
    with torch.device("meta"):
        ours, theirs = UNet2DConditionModel(cfg), D(**cfg)
    assert count_params(ours) == count_params(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    if expected: assert count_params(ours) == expected

@pytest.mark.slow
def test_parity_full_sd15():
    "Full SD v1.5 config, random weights (shared with diffusers by assignment), 1×4×64×64: max |Δ| ≤ 1e-4."
    from diffusers import UNet2DConditionModel as D
    torch.manual_seed(0)
    theirs = D(**SD15_UNET_CONFIG).eval()
    with torch.device("meta"): ours = UNet2DConditionModel(SD15_UNET_CONFIG)
    load_strict(ours, theirs.state_dict()).eval()
    x, ctx = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
    with torch.no_grad(): d = (theirs(x, 981, ctx).sample - ours(x, 981, ctx)).abs().max().item()
    assert d <= TOL, d


def test_no_graph_breaks():
    "torch.compile sees our UNet forward as one graph (fullgraph=True works; CUDA graphs need it), with every option."
    dynamo = pytest.importorskip("torch._dynamo")
    if not hasattr(dynamo, "explain") or not dynamo.is_dynamo_supported(): pytest.skip("dynamo is not available here")
    cfg = tiny_unet_config()
    torch.manual_seed(0)
    m = UNet2DConditionModel.from_config(cfg).eval()
    x, ctx = inputs(cfg)
    mask = torch.tensor([[1] * 4 + [0] * 3, [1] * 7])
    for name, args, kw in [("plain", (x, torch.tensor(500), ctx), {}),
                           ("fused, channels_last, mask, int t", (x.contiguous(memory_format=torch.channels_last), 7, ctx),
                            dict(encoder_attention_mask=mask))]:
        if name.startswith("fused"): m.fuse_qkv_projections().to(memory_format=torch.channels_last)
        dynamo.reset()
        with torch.no_grad(): e = dynamo.explain(m)(*args, **kw)
        assert (e.graph_count, e.graph_break_count) == (1, 0), f"{name}: {[b.reason for b in e.break_reasons]}"
    dynamo.reset()
