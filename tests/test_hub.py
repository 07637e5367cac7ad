"""hub: attribute configs, the strict state-dict check, safe weight reading, atomic writes, diffusers' folder layout."""
import json, os, pickle
import pytest, torch
from torch import nn
from sd_from_scratch.hub import (Config, check_state_dict, read_json, write_json, read_weights, find_weights,
                                 read_component_weights, write_weights, write_model_index)

SD = {"w": torch.arange(6.).view(2, 3), "b": torch.zeros(3)}

def test_config_is_a_dict_with_attributes():
    c = Config(a=1)
    assert c.a == 1 and getattr(c, "nope", 7) == 7 and json.loads(json.dumps(c)) == {"a": 1}
    with pytest.raises(AttributeError): c.nope

def test_write_json_is_atomic(tmp_path, monkeypatch):
    f = write_json(tmp_path / "sub" / "c.json", {"a": 1})
    assert f.read_text() == '{\n  "a": 1\n}\n'
    with pytest.raises(TypeError): write_json(f, {"a": object()})
    real = os.replace
    def crash(*a): raise KeyboardInterrupt                       # dies right before the rename
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt): write_json(f, {"a": 2})
    monkeypatch.setattr(os, "replace", real)
    assert read_json(f) == {"a": 1} and [p.name for p in f.parent.iterdir()] == ["c.json"]

def test_read_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing x.json"): read_json(tmp_path / "x.json")
    (tmp_path / "b.json").write_text("{")
    with pytest.raises(ValueError, match="b.json is not valid JSON"): read_json(tmp_path / "b.json")

class _Evil:
    def __reduce__(self): return (os.system, ("echo pwned > /dev/null",))

def test_read_weights_safe(tmp_path):
    write_weights(SD, tmp_path / "m.safetensors")
    assert all(torch.equal(read_weights(tmp_path / "m.safetensors")[k], v) for k, v in SD.items())
    with open(tmp_path / "evil.bin", "wb") as f: pickle.dump({"w": torch.ones(1), "x": _Evil()}, f, protocol=2)
    with pytest.raises(RuntimeError, match="refusing to load"): read_weights(tmp_path / "evil.bin")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"): read_weights(tmp_path / "cut.safetensors")
    torch.save({"state_dict": SD, "global_step": 3}, tmp_path / "old.ckpt")
    assert set(read_weights(tmp_path / "old.ckpt")) == {"w", "b"}
    with pytest.raises(ValueError, match="is a folder"): read_weights(tmp_path)
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(ValueError, match="expected .safetensors"): read_weights(tmp_path / "b.json")
    with pytest.raises(ValueError, match="writes .safetensors"): write_weights(SD, tmp_path / "m.bin")

def test_find_weights_order(tmp_path):
    write_weights(SD, tmp_path / "diffusion_pytorch_model.fp16.safetensors")
    with pytest.raises(FileNotFoundError, match="variant='fp16'"): find_weights(tmp_path)
    assert find_weights(tmp_path, variant="fp16")[0].name == "diffusion_pytorch_model.fp16.safetensors"
    torch.save(SD, tmp_path / "diffusion_pytorch_model.bin")
    assert find_weights(tmp_path)[0].name == "diffusion_pytorch_model.bin"
    write_weights(SD, tmp_path / "diffusion_pytorch_model.safetensors")
    assert find_weights(tmp_path)[0].suffix == ".safetensors"                   # safetensors before .bin
    assert find_weights(tmp_path, variant="fp16")[0].name.endswith(".fp16.safetensors")
    assert find_weights(tmp_path, variant="ema")[0].name == "diffusion_pytorch_model.safetensors"   # falls back to plain
    with pytest.raises(FileNotFoundError, match="component folder not found"): find_weights(tmp_path / "nope")

@pytest.mark.parametrize("index", ["model.safetensors.index.json", "model.fp16.safetensors.index.json",
                                   "model.safetensors.index.fp16.json"])
def test_shards_and_transformers_names(tmp_path, index):
    variant = "fp16" if "fp16" in index else None
    write_weights({"w": SD["w"]}, tmp_path / "model-00001-of-00002.safetensors")
    write_weights({"b": SD["b"]}, tmp_path / "model-00002-of-00002.safetensors")
    write_json(tmp_path / index, {"weight_map": {"w": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    got = read_component_weights(tmp_path, "model", variant)
    assert set(got) == {"w", "b"} and torch.equal(got["w"], SD["w"])
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lists shards missing"): find_weights(tmp_path, "model", variant)

def test_transformers_bin_name(tmp_path):
    torch.save(SD, tmp_path / "pytorch_model.bin")
    assert find_weights(tmp_path, ("diffusion_pytorch_model", "model"))[0].name == "pytorch_model.bin"

def test_check_state_dict_names_every_problem():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    check_state_dict(net, net.state_dict())
    bad = dict(net.state_dict()); bad.pop("1.bias"); bad["0.weight"] = torch.zeros(4, 5); bad["x"] = torch.zeros(1)
    with pytest.raises(ValueError) as e: check_state_dict(net, bad, "MLP")
    msg = str(e.value)
    assert "do not fit the MLP" in msg and "missing keys (1): 1.bias" in msg and "unexpected keys (1): x" in msg
    assert "0.weight: file (4, 5) vs model (4, 3)" in msg
    check_state_dict(net, {k: v for k, v in net.state_dict().items() if k != "1.bias"}, ignore=("bias",))

def test_write_model_index_matches_diffusers(tmp_path):
    "A diffusers pipeline saved by diffusers and our index for the same components are the same bytes."
    from diffusers import StableDiffusionPipeline
    from sd_from_scratch.images import shipped
    ref = StableDiffusionPipeline.from_pretrained(shipped("tiny-sd"), safety_checker=None, requires_safety_checker=False)
    ref.save_pretrained(tmp_path / "theirs")
    theirs = json.loads((tmp_path / "theirs" / "model_index.json").read_text())
    comps = {k: tuple(v) for k, v in theirs.items() if isinstance(v, list)}
    extra = {k: v for k, v in theirs.items() if k not in ("_class_name", "_diffusers_version") and not isinstance(v, list)}
    ours = write_model_index(tmp_path / "ours", comps, theirs["_class_name"], **extra)
    ours_text = ours.read_text().replace(json.loads(ours.read_text())["_diffusers_version"], theirs["_diffusers_version"])
    assert ours_text == (tmp_path / "theirs" / "model_index.json").read_text()
    with pytest.raises(ValueError, match="library, class"): write_model_index(tmp_path, {"unet": "diffusers"})
