"""CLIPTextModel: parity with 🤗 transformers' CLIPTextModel (same weights, fp32, max |Δ| ≤ 1e-4), folder formats,
clip skip, pooled output and errors. Tiny configs here; the ViT-L/14 text encoder of SD v1 in the slow test."""
import json
import pytest, torch
from safetensors.torch import load_file, save_file
from sd_from_scratch.text_encoder import CLIPTextModel, CLIPTextConfig, SD1_TEXT_CONFIG
from sd_from_scratch.tokenizer import CLIPTokenizer

transformers = pytest.importorskip("transformers")
transformers.utils.logging.disable_progress_bar()
TOL = 1e-4
TINY = dict(vocab_size=49408, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=77)
PROMPTS = ["a photograph of an astronaut riding a horse", "", "Ünïcode ✓ 東京, 1234!", "a red 7 on a blue background"]

@pytest.fixture(scope="module")
def tok(): return CLIPTokenizer()

def hf_random(cfg, seed=0):
    torch.manual_seed(seed)
    m = transformers.CLIPTextModel(transformers.CLIPTextConfig(**cfg)).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.02)     # layer norms and biases too
    return m

def maxdiff(a, b): return (a - b).abs().max().item()

def check_parity(hf, ours, enc):
    with torch.no_grad():
        r = hf(enc.input_ids, output_hidden_states=True)
        o = ours.encode(enc.input_ids, output_hidden_states=True)
        assert maxdiff(r.last_hidden_state, o.last_hidden_state) <= TOL
        assert maxdiff(r.pooler_output, o.pooler_output) <= TOL
        assert len(r.hidden_states) == len(o.hidden_states)
        for a, b in zip(r.hidden_states, o.hidden_states): assert maxdiff(a, b) <= TOL
        assert maxdiff(r.last_hidden_state, ours(enc.input_ids)) <= TOL
        for k in (1, 2):    # diffusers' clip_skip: hidden_states[-(k+1)] then the final layer norm
            assert maxdiff(hf.final_layer_norm(r.hidden_states[-(k + 1)]), ours(enc.input_ids, clip_skip=k)) <= TOL
        rm = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        assert maxdiff(rm.last_hidden_state, ours(enc.input_ids, attention_mask=enc.attention_mask)) <= TOL

@pytest.mark.parametrize("extra", [dict(), dict(eos_token_id=2), dict(hidden_act="gelu"), dict(layer_norm_eps=1e-6)])
def test_parity_tiny(tok, tmp_path, extra):
    hf = hf_random({**TINY, **extra})
    hf.save_pretrained(tmp_path)
    ours = CLIPTextModel.from_pretrained(tmp_path)
    check_parity(hf, ours, tok(PROMPTS))

def test_short_sequences_and_1d(tok, tmp_path):
    hf = hf_random(TINY); hf.save_pretrained(tmp_path)
    ours = CLIPTextModel.from_pretrained(tmp_path)
    enc = tok(["a cat", "a dog on a mat"], padding="longest")
    check_parity(hf, ours, enc)
    with torch.no_grad(): assert torch.equal(ours(enc.input_ids[0]), ours(enc.input_ids[:1]))

def test_transformers_loads_ours(tok, tmp_path):
    torch.manual_seed(1)
    ours = CLIPTextModel.from_config(TINY).eval()
    ours.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    assert "text_model.embeddings.token_embedding.weight" in sd          # the hub layout
    hf = transformers.CLIPTextModel.from_pretrained(tmp_path).eval()
    check_parity(hf, ours, tok(PROMPTS))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "clip_text_model" and cfg["architectures"] == ["CLIPTextModel"]

def test_folder_layouts(tok, tmp_path):
    hf = hf_random(TINY)
    ids = tok(PROMPTS).input_ids
    with torch.no_grad(): ref = hf(ids).last_hidden_state
    # pipeline folder with text_encoder/
    hf.save_pretrained(tmp_path / "pipe" / "text_encoder")
    m = CLIPTextModel.from_pretrained(tmp_path / "pipe")
    with torch.no_grad(): assert maxdiff(m(ids), ref) <= TOL
    # hub-style 'text_model.' keys + the old position_ids buffer, and a .bin file
    d = tmp_path / "legacy"; d.mkdir()
    (d / "config.json").write_text((tmp_path / "pipe" / "text_encoder" / "config.json").read_text())
    sd = {"text_model." + k: v for k, v in hf.state_dict().items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(sd, d / "pytorch_model.bin")
    m = CLIPTextModel.from_pretrained(d)
    with torch.no_grad(): assert maxdiff(m(ids), ref) <= TOL
    # a full CLIPModel folder: text_config + text_model.* keys (vision weights ignored)
    full = transformers.CLIPModel(transformers.CLIPConfig(text_config=TINY, vision_config=dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=16)))
    full.save_pretrained(tmp_path / "clip")
    m = CLIPTextModel.from_pretrained(tmp_path / "clip")
    with torch.no_grad():
        assert maxdiff(m(ids), full.text_model(ids).last_hidden_state) <= TOL
    # dtype on load; float32 by default even from a half-precision checkpoint; parameters stay trainable
    m16 = CLIPTextModel.from_pretrained(tmp_path / "pipe", dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16 and m16(ids).dtype == torch.bfloat16
    hf.half().save_pretrained(tmp_path / "half")
    m = CLIPTextModel.from_pretrained(tmp_path / "half")
    assert all(p.dtype == torch.float32 and p.requires_grad and isinstance(p, torch.nn.Parameter) for p in m.parameters())
    assert not any(p.is_meta for p in m.parameters())

def test_errors(tok, tmp_path):
    m = CLIPTextModel.from_config(TINY)
    with pytest.raises(TypeError, match="integer tensor"): m(torch.zeros(1, 77))
    with pytest.raises(TypeError, match="integer tensor"): m([[1, 2, 3]])
    with pytest.raises(ValueError, match="positions"): m(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must lie"): m(torch.full((1, 5), 49408))
    with pytest.raises(ValueError, match="clip_skip"): m(torch.zeros(1, 5, dtype=torch.long), clip_skip=3)
    with pytest.raises(ValueError, match="multiple"): CLIPTextModel.from_config({**TINY, "num_attention_heads": 5})
    with pytest.raises(ValueError, match="hidden_act"): CLIPTextModel.from_config({**TINY, "hidden_act": "mish"})
    m.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors"); sd.pop("text_model.final_layer_norm.bias"); sd["text_model.extra"] = torch.zeros(1)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \(1\): text_model.final_layer_norm.bias\n.*unexpected keys \(1\): text_model.extra"):
        CLIPTextModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError): CLIPTextModel.from_pretrained(tmp_path / "nope")

def test_causal_and_empty_prompt(tok):
    torch.manual_seed(0)
    m = CLIPTextModel.from_config(TINY).eval()
    with torch.no_grad():
        a, b = m(tok(["a cat", "a cat on a mat"]).input_ids)
        e = m.encode(tok("").input_ids)
    assert maxdiff(a[:3], b[:3]) == 0 and maxdiff(a[3], b[3]) > 1e-3
    assert e.last_hidden_state.shape == (1, 77, 32) and e.pooler_output.shape == (1, 32)
    assert torch.equal(e.pooler_output[0], e.last_hidden_state[0, 1])     # "" → the end token is at position 1

def test_config_roundtrip():
    cfg = CLIPTextConfig.from_dict({**SD1_TEXT_CONFIG, "some_future_key": 3})
    d = cfg.to_dict()
    assert d["some_future_key"] == 3 and d["hidden_size"] == 768 and d["projection_dim"] == 768
    with torch.device("meta"):
        assert sum(p.numel() for p in CLIPTextModel(SD1_TEXT_CONFIG).parameters()) == 123_060_480

@pytest.mark.slow
def test_parity_vit_l14(tok, tmp_path):
    hf = hf_random(SD1_TEXT_CONFIG)
    hf.save_pretrained(tmp_path)
    ours = CLIPTextModel.from_pretrained(tmp_path)
    assert sum(p.numel() for p in ours.parameters()) == 123_060_480
    check_parity(hf, ours, tok(PROMPTS))
