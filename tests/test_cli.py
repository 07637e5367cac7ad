"""`sdfs`: output paths claimed atomically and validated before any work, arguments checked, A1111 text read strictly."""
import os, threading
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from sd_from_scratch import cli
from sd_from_scratch.cli import main, parse_parameters, read_parameters, output_paths, format_parameters

P = "a red 7 on a blue background"

def gen(*args, steps="2"):
    return main(["generate", P, "--steps", steps, "--device", "cpu", *args])

def test_parallel_generates_never_collide(tmp_path, one_thread):
    "Five generates with the same seed into one folder, at once: five files, none lost (names claimed with O_EXCL)."
    d = tmp_path / "D"
    rcs = []
    ts = [threading.Thread(target=lambda: rcs.append(gen("--seed", "7", "--out", str(d)))) for _ in range(5)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert rcs == [0] * 5
    files = sorted(f.name for f in d.iterdir())
    assert files == [f"{i:05d}-7.png" for i in range(1, 6)], files
    assert all((d / f).stat().st_size > 0 for f in files)

def test_claims_are_exclusive(tmp_path):
    a = output_paths(tmp_path, 2, 7); b = output_paths(tmp_path, 1, 7)
    assert [p.name for p in a + b] == ["00001-7.png", "00002-8.png", "00003-7.png"]
    with pytest.raises(FileExistsError, match="overwrite"): output_paths(tmp_path / "00001-7.png", 1, 7)

def test_overwrite_replaces_only_the_named_file(tmp_path, one_thread):
    d = tmp_path / "D"
    assert gen("--seed", "1", "--out", str(d)) == 0 and gen("--seed", "1", "--out", str(d), "--overwrite") == 0
    assert sorted(f.name for f in d.iterdir()) == ["00001-1.png", "00002-1.png"]       # a folder: always a fresh name
    f = tmp_path / "x.png"
    assert gen("--seed", "1", "--out", str(f)) == 0
    assert gen("--seed", "2", "--out", str(f)) == 2
    assert gen("--seed", "2", "--out", str(f), "--overwrite") == 0
    assert read_parameters(f)["seed"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["D", "x.png"]

def test_output_paths_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    def no_work(*a, **k): raise AssertionError("the model was loaded before the output path was checked")
    monkeypatch.setattr(cli, "load_pipeline", no_work)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "x.png").mkdir()
    cases = [(tmp_path / "file.txt", "is a file"), (tmp_path / "file.txt" / "sub", "is a file"),
             (tmp_path / "x.png", "is a folder"), (tmp_path / "file.txt" / "a.png", "is a file")]
    for out, words in cases:
        assert gen("--out", str(out)) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and ".tmp" not in err, err

@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_folder_is_refused_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: pytest.fail("model loaded first"))
    ro = tmp_path / "ro"; ro.mkdir(); ro.chmod(0o500)
    assert gen("--out", str(ro)) == 2 and "cannot write" in capsys.readouterr().err

def test_write_errors_name_the_file_not_the_temp_file(tmp_path, monkeypatch):
    def full(self, fp, *a, **k): raise OSError(28, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError) as e: cli.save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", "p\nSteps: 1")
    assert "x.png" in str(e.value) and ".tmp" not in str(e.value) and "No space" in str(e.value)
    assert list(tmp_path.iterdir()) == []

@pytest.mark.parametrize("args,words", [
    (["--num", "0"], "--num"), (["--seed", str(2**70)], "--seed"), (["--seed", "-3"], "--seed"),
    (["--size", "40x33"], "width×height"), (["--size", "0"], "--size"), (["--guidance", "nan"], "--guidance"),
    (["--steps", "0"], "--steps"), (["--eta", "inf", "--sampler", "ddim"], "--eta"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: pytest.fail("model loaded before the arguments were checked"))
    assert gen(*args, "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err

def test_size_message_is_width_by_height(capsys, tmp_path):
    assert gen("--size", "40x33", "--out", str(tmp_path)) == 2
    assert "try 40x32" in capsys.readouterr().err

@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    assert gen("--device", "cuda", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cuda" in err and "--device cpu" in err, err
    assert main(["generate", P, "--device", "tpu9", "--out", str(tmp_path)]) == 2 and "--device" in capsys.readouterr().err

def test_from_png_junk_and_a1111_schedule_type(tmp_path, capsys):
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo(); info.add_text("parameters", "just some words, no settings")
    Image.new("RGB", (8, 8)).save(tmp_path / "junk.png", pnginfo=info)
    assert gen("--from-png", str(tmp_path / "junk.png"), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "junk.png" in err and "Steps" in err, err
    p = parse_parameters("a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512")
    assert p["sampler"] == "dpmpp_2m_karras"
    assert parse_parameters(format_parameters(dict(prompt="x", steps=3, sampler="dpmpp_2m_karras", seed=1)))["sampler"] == "dpmpp_2m_karras"

def test_long_prompt_warns_in_one_line(tmp_path, capsys, one_thread):
    assert main(["generate", "a red 7 " * 500, "--steps", "1", "--device", "cpu", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300 and "warning" in err, err[:500]

def test_model_single_file(tmp_path, capsys, one_thread):
    import sd_from_scratch
    from sd_from_scratch.loading import save_ldm_checkpoint
    from sd_from_scratch.images import shipped
    pipe = sd_from_scratch.load_default()
    f = save_ldm_checkpoint(tmp_path / "tiny.safetensors", pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict())
    assert gen("--model", str(f), "--config", str(shipped("tiny-sd")), "--seed", "3", "--out", str(tmp_path / "a.png")) == 0
    assert gen("--seed", "3", "--out", str(tmp_path / "b.png")) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
    assert read_parameters(tmp_path / "a.png")["model"] == "tiny.safetensors"
    capsys.readouterr()
    assert gen("--model", str(f), "--out", str(tmp_path / "c.png")) == 2       # SD v1.5 configs do not fit the tiny weights
    err = capsys.readouterr().err
    assert "--config" in err and err.count("\n") <= 6, err
    (tmp_path / "w.bin").write_bytes(b"x")
    assert gen("--model", str(tmp_path / "w.bin"), "--out", str(tmp_path / "d.png")) == 2
    assert ".safetensors or .ckpt" in capsys.readouterr().err


def _toy_lora_file(path, layout="kohya", std=0.15, seed=0):
    "A random rank-4 LoRA on the shipped toy UNet's attention layers, saved as .safetensors."
    import torch
    from safetensors.torch import save_file
    import sd_from_scratch.adapters as A
    from sd_from_scratch import load_default
    pipe = load_default()
    g, sd = torch.Generator().manual_seed(seed), {}
    for n in A.default_lora_targets(pipe.unet, "unet", conv=False):
        w = pipe.unet.get_submodule(n).weight
        k = "lora_unet_" + n.replace(".", "_")
        sd[k + ".lora_down.weight"] = torch.randn(4, w.shape[1], generator=g) * std
        sd[k + ".lora_up.weight"] = torch.randn(w.shape[0], 4, generator=g) * std
        sd[k + ".alpha"] = torch.tensor(4.0)
    save_file(sd, str(path)); return path


def test_lora_embedding_and_weighting_from_the_command_line(tmp_path, capsys, one_thread):
    "--lora FILE:SCALE and <lora:name:s> tags give the same image, recorded for --from-png; --embedding; --weighting (issue 19)."
    import torch
    from sd_from_scratch.adapters import save_embedding, lora_hash
    loras = tmp_path / "loras"; loras.mkdir()
    f = _toy_lora_file(loras / "style.safetensors")
    plain = tmp_path / "plain.png"
    assert main(["generate", "a red 3 on a blue background", "--seed", "0", "--steps", "2", "--out", str(plain)]) == 0
    assert main(["generate", "a red 3 on a blue background", "--seed", "0", "--steps", "2", "--lora", f"{f}:0.8",
                 "--out", str(tmp_path / "a.png")]) == 0
    assert main(["generate", "a red 3 on a blue background <lora:style:0.8>", "--seed", "0", "--steps", "2",
                 "--lora-dir", str(loras), "--out", str(tmp_path / "b.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert (a == b).all() and np.abs(a.astype(int) - np.asarray(Image.open(plain)).astype(int)).max() > 0
    p = read_parameters(tmp_path / "a.png")
    assert p["prompt"] == "a red 3 on a blue background <lora:style:0.8>" and p["lora_hashes"] == f"style: {lora_hash(f)}"
    assert main(["generate", "--from-png", str(tmp_path / "a.png"), "--lora-dir", str(loras), "--out", str(tmp_path / "c.png")]) == 0
    assert (np.asarray(Image.open(tmp_path / "c.png")) == a).all()
    capsys.readouterr()
    assert main(["generate", "--from-png", str(tmp_path / "a.png"), "--out", str(tmp_path / "d.png")]) != 0
    assert "--lora-dir" in capsys.readouterr().err
    _toy_lora_file(loras / "style.safetensors", seed=1)                   # same name, another file: the hash says so
    assert main(["generate", "--from-png", str(tmp_path / "a.png"), "--lora-dir", str(loras), "--out", str(tmp_path / "e.png")]) != 0
    assert "different file" in capsys.readouterr().err
    # an embedding: a new word with "red"'s vector draws like "red"; recorded, and required again by --from-png
    from sd_from_scratch import load_default
    pipe = load_default()
    red = pipe.text_encoder.text_model.embeddings.token_embedding.weight[pipe.tokenizer.encode("red")[1]].detach()
    emb = save_embedding(red[None].clone(), "<rouge>", tmp_path / "rouge.pt", "a1111")
    assert main(["generate", "a <rouge> 3 on a blue background", "--seed", "0", "--steps", "2", "--embedding",
                 f"{emb}:<rouge>", "--out", str(tmp_path / "t.png")]) == 0
    assert (np.asarray(Image.open(tmp_path / "t.png")) == np.asarray(Image.open(plain))).all()
    assert "<rouge>: " in read_parameters(tmp_path / "t.png")["ti_hashes"]
    capsys.readouterr()
    assert main(["generate", "--from-png", str(tmp_path / "t.png"), "--out", str(tmp_path / "t2.png")]) != 0
    assert "--embedding" in capsys.readouterr().err
    # --weighting: recorded, and it changes a weighted prompt
    assert main(["generate", "a (red:1.8) 3 on a blue background", "--seed", "0", "--steps", "2", "--weighting",
                 "--out", str(tmp_path / "w.png")]) == 0
    assert read_parameters(tmp_path / "w.png")["weighting"] is True
    assert main(["generate", "--from-png", str(tmp_path / "w.png"), "--out", str(tmp_path / "w2.png")]) == 0
    assert (np.asarray(Image.open(tmp_path / "w.png")) == np.asarray(Image.open(tmp_path / "w2.png"))).all()


def test_fast_flag_is_recorded_and_reproduced(tmp_path, one_thread):
    "--fast (bf16 + lesson 10a's enable_fast_sampling) is recorded in the PNG, and --from-png redraws the same pixels."
    assert main(["generate", P, "--seed", "3", "--steps", "6", "--fast", "--out", str(tmp_path / "f.png")]) == 0
    assert read_parameters(tmp_path / "f.png")["fast"] is True
    assert main(["generate", "--from-png", str(tmp_path / "f.png"), "--out", str(tmp_path / "g.png")]) == 0
    assert (np.asarray(Image.open(tmp_path / "f.png")) == np.asarray(Image.open(tmp_path / "g.png"))).all()
    assert main(["generate", P, "--seed", "3", "--steps", "6", "--out", str(tmp_path / "slow.png")]) == 0
    assert "Fast sampling" not in Image.open(tmp_path / "slow.png").info["parameters"]

@pytest.mark.parametrize("command", ["generate", "img2img", "inpaint", "train", "sweep"])
def test_every_help_text_prints(command, capsys):
    "argparse %-formats help strings: a stray '%' (say '~30 % of') crashes `--help` with a TypeError."
    with pytest.raises(SystemExit) as e: main([command, "--help"])
    assert e.value.code == 0 and "usage: sdfs" in capsys.readouterr().out

def test_threshold_options_are_what_they_say(tmp_path, capsys, one_thread):
    "--threshold alone is static clipping (s ≤ 1); --threshold-max > 1 is Imagen's dynamic thresholding; both are recorded."
    with pytest.raises(SystemExit): main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "static clipping" in out and "--threshold-max" in out
    args = ["--seed", "2", "--sampler", "ddim", "--threshold", "0.995"]
    assert gen(*args, "--out", str(tmp_path / "static.png")) == 0
    assert gen(*args, "--threshold-max", "10", "--out", str(tmp_path / "dynamic.png")) == 0
    p = read_parameters(tmp_path / "dynamic.png")
    assert (p["threshold"], p["threshold_max"]) == (0.995, 10.0) and "threshold_max" not in read_parameters(tmp_path / "static.png")
    static, dynamic = (np.asarray(Image.open(tmp_path / f"{k}.png")) for k in ("static", "dynamic"))
    assert (static != dynamic).any()
    assert main(["generate", "--from-png", str(tmp_path / "dynamic.png"), "--out", str(tmp_path / "again.png")]) == 0
    assert (np.asarray(Image.open(tmp_path / "again.png")) == dynamic).all()
    capsys.readouterr()
    assert gen("--threshold-max", "10", "--out", str(tmp_path)) == 2 and "needs --threshold" in capsys.readouterr().err
    assert gen("--threshold", "0.995", "--threshold-max", "0.5", "--out", str(tmp_path)) == 2
    assert "--threshold-max" in capsys.readouterr().err
