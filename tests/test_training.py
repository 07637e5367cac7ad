"""Training: kill -9 mid-run + resume ends bit-identical to an uninterrupted run; 2-process data parallel via accelerate."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

TINY_UNET = {"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
             "block_out_channels": [16, 32], "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 8,
             "norm_num_groups": 8}

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    "A tiny pipeline folder with random frozen parts (the shipped model is not needed for these tests)."
    from sd_from_scratch.vae import AutoencoderKL
    from sd_from_scratch.text_encoder import CLIPTextModel
    from sd_from_scratch.tokenizer import CLIPTokenizer
    from sd_from_scratch.unet import UNet2DConditionModel
    from sd_from_scratch.toy import TOY_VAE_CONFIG, TOY_TEXT_CONFIG, TOY_SCHEDULER_CONFIG
    from sd_from_scratch.training import save_pipeline
    d = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    save_pipeline(d, UNet2DConditionModel.from_config(TINY_UNET), AutoencoderKL.from_config(TOY_VAE_CONFIG),
                  CLIPTextModel.from_config(TOY_TEXT_CONFIG), CLIPTokenizer(), TOY_SCHEDULER_CONFIG)
    return d

def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env

def _args(out, base, steps, *extra):
    return ["--out", str(out), "--base", str(base), "--data", "toy", "--limit", "96", "--max-steps", str(steps),
            "--save-every", "3", "--batch-size", "8", "--grad-accum", "2", "--warmup-steps", "4", "--lr", "1e-3",
            "--ema-decay", "0.99", "--threads", "1", "--no-progress", *extra]

def _train(out, base, steps, *extra):
    r = subprocess.run([PY, "-m", "sd_from_scratch.training", *_args(out, base, steps, *extra)], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r

def _weights(folder):
    return load_file(Path(folder) / "unet" / "diffusion_pytorch_model.safetensors")

def _same(a, b):
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"

def test_kill_and_resume_is_bit_identical(base, tmp_path):
    steps = 24
    full, broken = tmp_path / "full", tmp_path / "broken"
    _train(full, base, steps)
    # the same run, killed with SIGKILL as soon as its second checkpoint is complete
    p = subprocess.Popen([PY, "-m", "sd_from_scratch.training", *_args(broken, base, steps)], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (broken / "checkpoint-6").exists():
        assert p.poll() is None, f"training exited early: {p.stderr.read()[-2000:]}"
        assert time.time() - t0 < 240, "no checkpoint appeared"
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert not (broken / "model_index.json").exists(), "the run finished before it could be killed"
    done = sorted(x.name for x in broken.iterdir() if x.name.startswith("checkpoint-"))
    assert done and all((broken / d / "state.json").exists() for d in done), done
    r = _train(broken, base, steps, "--resume")
    assert "resumed from" in r.stderr
    _same(_weights(full), _weights(broken))                              # the shipped (EMA) weights
    _same(load_file(full / f"checkpoint-{steps}" / "unet.safetensors"),   # the raw weights
          load_file(broken / f"checkpoint-{steps}" / "unet.safetensors"))
    assert json.loads((full / "loss.json").read_text()) == json.loads((broken / "loss.json").read_text())
    # the result is a pipeline folder
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"): assert (broken / sub).is_dir()

def test_resume_refuses_a_different_run(base, tmp_path):
    _train(tmp_path, base, 3)
    r = subprocess.run([PY, "-m", "sd_from_scratch.training", *_args(tmp_path, base, 6, "--resume", "--seed", "1")],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "differ" in r.stderr

def test_two_processes_with_accelerate(base, tmp_path):
    acc = Path(PY).parent / "accelerate"
    if not acc.exists(): pytest.skip("accelerate is not installed")
    if torch.cuda.device_count() > 0: pytest.skip("this test runs the 2 processes on the CPU")
    env = _env()
    # `--multi_gpu` selects accelerate's torchrun launcher (2 processes); with no GPU our Accelerator(cpu=True)
    # makes it a gloo process group on the CPU. (`--cpu` alone would start a single process.)
    r = subprocess.run([str(acc), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "-m", "sd_from_scratch.training",
                        *_args(tmp_path, base, 6)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    st = json.loads((tmp_path / "checkpoint-6" / "state.json").read_text())
    assert st["world_size"] == 2 and st["samples_seen"] == 6 * 2 * 8 * 2
    assert {p.name for p in (tmp_path / "checkpoint-6").glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    assert (tmp_path / "model_index.json").exists()
    w = _weights(tmp_path)
    assert all(torch.isfinite(v).all() for v in w.values())

def test_noise_offset_is_a_resume_option(base, tmp_path):
    "Checkpoints from before `noise_offset` existed resume with its default (0); changing it mid-run is refused."
    _train(tmp_path, base, 3)
    st = tmp_path / "checkpoint-3" / "state.json"
    s = json.loads(st.read_text()); del s["config"]["noise_offset"]; st.write_text(json.dumps(s))   # an older checkpoint
    r = subprocess.run([PY, "-m", "sd_from_scratch.training", *_args(tmp_path, base, 6, "--resume", "--noise-offset", "0.1")],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "noise_offset" in r.stderr
    assert "resumed from" in _train(tmp_path, base, 6, "--resume").stderr
