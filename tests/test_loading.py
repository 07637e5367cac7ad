"""Loading: diffusers folders (variants, .bin, tokenizer layouts), hub ids offline, safe unpickling, CompVis single files."""
import os, pickle, time
from pathlib import Path
import pytest, torch
from fixtures import make_tiny_sd, SD15_SCHEDULER
from sd_from_scratch.loading import *
from sd_from_scratch.hub import read_json, read_weights as load_state_dict   # lesson 00a: one file, safely

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    ref = make_tiny_sd(d / "sd")
    return d / "sd", ref

def test_model_index_and_configs(tiny):
    d, ref = tiny
    idx = read_model_index(d)
    assert set(idx) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert read_config(d / "unet")["cross_attention_dim"] == 32
    assert read_config(d / "scheduler")["steps_offset"] == 1
    with pytest.raises(FileNotFoundError, match="model_index.json"): read_model_index(d / "unet")

def test_weights_match_diffusers(tiny):
    d, ref = tiny
    for name, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        assert find_weights(d / name)[0].name == f"{stem}.safetensors"
        sd = load_component_weights(d / name)
        own = getattr(ref, name).state_dict()
        sd = align_prefix(sd, own)
        assert set(sd) == {k for k in own if not k.endswith("position_ids")}
        assert all(torch.equal(sd[k], own[k]) for k in sd)

def test_fp16_variant_and_bin(tmp_path):
    ref = make_tiny_sd(tmp_path / "a", variant="fp16")
    assert find_weights(tmp_path / "a" / "unet", "fp16")[0].name == "diffusion_pytorch_model.fp16.safetensors"
    make_tiny_sd(tmp_path / "b", safe_serialization=False)
    f = find_weights(tmp_path / "b" / "unet")[0]
    assert f.suffix == ".bin"
    sd = load_component_weights(tmp_path / "b" / "unet")
    assert all(torch.equal(sd[k], v) for k, v in ref.unet.state_dict().items())
    # safetensors wins over .bin when both exist
    (tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "a" / "unet" / "diffusion_pytorch_model.fp16.safetensors").read_bytes())
    assert find_weights(tmp_path / "b" / "unet")[0].suffix == ".safetensors"

def test_sharded(tmp_path):
    from safetensors.torch import save_file
    import json
    sd = {"a": torch.ones(2), "b": torch.zeros(3)}
    save_file({"a": sd["a"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": sd["b"]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    got = load_component_weights(tmp_path)
    assert set(got) == {"a", "b"} and torch.equal(got["b"], sd["b"])

class _Evil:
    def __reduce__(self): return (os.system, ("echo pwned > /dev/null",))

def test_never_unpickles_code(tmp_path):
    with open(tmp_path / "evil.bin", "wb") as f: pickle.dump({"w": torch.ones(1), "x": _Evil()}, f)
    with pytest.raises(RuntimeError, match="refusing to load"): load_state_dict(tmp_path / "evil.bin")
    with open(tmp_path / "evil.ckpt", "wb") as f: pickle.dump({"state_dict": {"w": _Evil()}}, f)
    with pytest.raises(RuntimeError, match="refusing to load"): load_ldm_checkpoint(tmp_path / "evil.ckpt")

def test_missing_files_and_keys(tiny, tmp_path):
    d, ref = tiny
    with pytest.raises(FileNotFoundError, match="no weights in"): find_weights(d / "scheduler")
    with pytest.raises(FileNotFoundError, match="not found"): load_state_dict(tmp_path / "nope.safetensors")
    sd = load_component_weights(d / "unet"); sd.pop("conv_in.weight"); sd["extra.weight"] = torch.ones(1)
    from diffusers import UNet2DConditionModel
    with pytest.raises(ValueError, match=r"missing keys \(1\): conv_in.weight") as e:
        load_weights(UNet2DConditionModel(**ref.unet.config), sd, "UNet")
    assert "unexpected keys (1): extra.weight" in str(e.value)

def test_tokenizer_layouts(tiny, tmp_path):
    d, ref = tiny
    v1, m1 = tokenizer_vocab_merges(d / "tokenizer")
    (tmp_path / "tokenizer.json").write_bytes((d / "tokenizer" / "tokenizer.json").read_bytes())
    v2, m2 = tokenizer_vocab_merges(tmp_path)
    assert v1 == v2 and m1 == m2 and len(v1) == 49408
    hub = hub_tokenizer_dir(tmp_path)
    assert (hub / "vocab.json").is_file() and (hub / "merges.txt").is_file()
    from sd_from_scratch.tokenizer import CLIPTokenizer
    ours = CLIPTokenizer.from_pretrained(hub)
    texts = ["a photo of an astronaut riding a horse on mars", "", "Hello,   WORLD!!"]
    assert ours(texts)["input_ids"].tolist() == ref.tokenizer(texts, padding="max_length", max_length=77).input_ids

def test_hub_id_offline_fails_fast_and_helpfully(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ConnectionError) as e:
        resolve_pipeline_dir("stable-diffusion-v1-5/stable-diffusion-v1-5", cache_dir=tmp_path)
    assert time.time() - t0 < 10
    msg = str(e.value)
    assert "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5" in msg and "model_index.json" in msg

def test_hub_id_unreachable_network_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")   # .invalid never resolves (RFC 2606)
    t0 = time.time()
    with pytest.raises(ConnectionError, match="not reachable"):
        resolve_pipeline_dir("someone/some-model", variant="fp16", cache_dir=tmp_path)
    assert time.time() - t0 < 10

def test_paths_and_patterns(tiny, tmp_path):
    d, _ = tiny
    assert resolve_pipeline_dir(d) == d
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"): resolve_pipeline_dir(tmp_path)
    assert is_hub_id("stable-diffusion-v1-5/stable-diffusion-v1-5") and not is_hub_id(str(d))
    pats = hub_patterns("fp16")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in pats and not any(p.endswith(".bin") for p in pats)
    assert not any(p.endswith(".ckpt") for p in pats)

# ---- CompVis single files

def _diffusers_sds(ref):
    return {"unet": ref.unet.state_dict(), "vae": ref.vae.state_dict(),
            "text_encoder": align_prefix(ref.text_encoder.state_dict(), ["text_model.x"])}

@pytest.mark.parametrize("ext", ["safetensors", "ckpt"])
def test_compvis_roundtrip(tiny, tmp_path, ext):
    d, ref = tiny
    sds = _diffusers_sds(ref)
    f = save_ldm_checkpoint(tmp_path / f"m.{ext}", **sds)
    raw = load_state_dict(f)
    assert any(k.startswith("model.diffusion_model.input_blocks.1.0.in_layers.0") for k in raw)
    assert raw["first_stage_model.decoder.mid.attn_1.proj_out.weight"].ndim == 4
    back = load_ldm_checkpoint(f)
    for c, sd in sds.items():
        sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
        assert set(back[c]) == set(sd), c
        assert all(torch.equal(back[c][k], sd[k]) for k in sd), c
    # and ldm → diffusers → ldm is the identity on the CompVis dict
    again = join_ldm_checkpoint(back["unet"], back["vae"], back["text_encoder"])
    assert set(again) == set(raw) and all(torch.equal(again[k], raw[k]) for k in raw)

def test_compvis_against_diffusers_converter(tiny):
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                     convert_ldm_clip_checkpoint)
    d, ref = tiny
    sds = _diffusers_sds(ref)
    ckpt = join_ldm_checkpoint(**sds)
    theirs = {"unet": convert_ldm_unet_checkpoint(dict(ckpt), dict(ref.unet.config)),
              "vae": convert_ldm_vae_checkpoint(dict(ckpt), dict(ref.vae.config)),
              "text_encoder": convert_ldm_clip_checkpoint(dict(ckpt))}
    ours = split_ldm_checkpoint(ckpt)
    for c in sds:
        orig = {k: v for k, v in sds[c].items() if not k.endswith("position_ids")}
        th = {k: v for k, v in theirs[c].items() if not k.endswith("position_ids")}
        assert set(th) == set(orig) == set(ours[c]), c
        for k in orig:
            assert torch.equal(th[k], orig[k]) and torch.equal(ours[c][k], orig[k]), (c, k)

def test_compvis_full_size_keys_on_meta():
    "The SD v1.5 UNet and VAE key maps, on meta tensors (no memory): ours and diffusers' converter agree."
    from diffusers import UNet2DConditionModel, AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in SD15_UNET_CONFIG.items() if not k.startswith("_")})
        vae = AutoencoderKL(**{k: v for k, v in SD15_VAE_CONFIG.items() if not k.startswith("_")})
    u, v = unet.state_dict(), vae.state_dict()
    ldm = {**unet_to_ldm(u), **vae_to_ldm(v)}
    assert "model.diffusion_model.input_blocks.11.0.in_layers.0.weight" in ldm
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm         # no attention at the lowest level
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in ldm         # attention, then upsampler
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in ldm
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in ldm
    tu = convert_ldm_unet_checkpoint(dict(ldm), SD15_UNET_CONFIG)
    tv = convert_ldm_vae_checkpoint(dict(ldm), SD15_VAE_CONFIG)
    assert set(tu) == set(u) and all(tu[k].shape == u[k].shape for k in u)
    assert set(tv) == set(v) and all(tv[k].shape == v[k].shape for k in v)
    assert set(unet_from_ldm(ldm if False else {k: t for k, t in ldm.items() if k.startswith("model.")})) == set(u)
    assert set(vae_from_ldm({k: t for k, t in ldm.items() if k.startswith("first_stage_model.")})) == set(v)

def test_extract_ema_and_bad_checkpoint(tiny):
    d, ref = tiny
    ckpt = join_ldm_checkpoint(**_diffusers_sds(ref))
    ema = {"model_ema." + "".join(k.split(".")[1:]): v + 1 for k, v in ckpt.items() if k.startswith("model.diffusion_model.")}
    got = split_ldm_checkpoint({**ckpt, **ema}, extract_ema=True)["unet"]
    assert torch.equal(got["conv_in.weight"], ref.unet.state_dict()["conv_in.weight"] + 1)
    with pytest.raises(KeyError, match="extract_ema=True"): split_ldm_checkpoint(ckpt, extract_ema=True)
    with pytest.raises(KeyError, match="not a Stable Diffusion v1 CompVis checkpoint"):
        split_ldm_checkpoint({k: v for k, v in ckpt.items() if not k.startswith("first_stage_model.")})

def test_single_file_configs(tiny):
    d, ref = tiny
    sds = split_ldm_checkpoint(join_ldm_checkpoint(**_diffusers_sds(ref)))
    assert single_file_configs(sds, d)["unet"]["block_out_channels"] == [32, 64]
    cf = single_file_configs({"unet": {"conv_in.weight": torch.zeros(320, 9, 3, 3, device="meta")}})
    assert cf["unet"]["in_channels"] == 9 and cf["scheduler"]["skip_prk_steps"] is True


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst

def test_files_name_themselves_in_errors(tiny, tmp_path):
    "A truncated .safetensors, an invalid config.json, weights of the wrong shape: each error names the file."
    from sd_from_scratch.pipeline import StableDiffusion
    d, _ = tiny
    bad = _copy(d, tmp_path / "truncated")
    w = bad / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model\.safetensors.*truncated"): StableDiffusion.from_pretrained(bad)
    bad = _copy(d, tmp_path / "json")
    (bad / "vae" / "config.json").write_text('{"in_channels": 3,,}')
    with pytest.raises(ValueError, match=r"vae/config\.json is not valid JSON"): StableDiffusion.from_pretrained(bad)
    bad = _copy(d, tmp_path / "shapes")
    from safetensors.torch import load_file, save_file
    t = bad / "text_encoder" / "model.safetensors"
    sd = load_file(t); k = next(iter(sd)); sd[k] = torch.zeros(3, 3); save_file(sd, t)
    with pytest.raises(ValueError, match=r"text encoder \(.*text_encoder/model\.safetensors\)"): StableDiffusion.from_pretrained(bad)
    bad = _copy(d, tmp_path / "keys")
    cfg = bad / "unet" / "config.json"
    import json
    c = json.loads(cfg.read_text()); c["layers_per_block"] = 1; cfg.write_text(json.dumps(c))
    with pytest.raises(ValueError, match=r"(?s)UNet \(.*unet/diffusion_pytorch_model\.safetensors\).*unexpected keys"):
        StableDiffusion.from_pretrained(bad)

def test_single_file_given_a_folder(tiny):
    from sd_from_scratch.pipeline import StableDiffusion
    d, _ = tiny
    with pytest.raises(ValueError, match=r"is a folder.*from_pretrained"): StableDiffusion.from_single_file(d)
    with pytest.raises(ValueError, match=r"is a folder"): load_state_dict(d / "unet")
