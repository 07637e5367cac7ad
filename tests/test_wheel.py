"""The wheel is the product: build it, install it into a temporary target, and generate from outside the checkout.

`pip wheel --no-deps --no-build-isolation` builds from a copy of the source (so the checkout stays clean), `pip install
--no-deps --target T` installs it, and a fresh interpreter run from another folder, with only T and the venv's
site-packages on its path (never the checkout), loads the shipped model and writes a PNG through the CLI."""
import os, shutil, subprocess, sys, sysconfig, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "settings.ini", "MANIFEST.in", "LICENSE", "README.md", "sd_from_scratch", "data"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"; src.mkdir()
    for s in SOURCES:
        (shutil.copytree if (ROOT / s).is_dir() else shutil.copy)(ROOT / s, src / s)
    for junk in src.rglob("__pycache__"): shutil.rmtree(junk, ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("sd_from_scratch-*.whl")
    target = tmp / "target"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(target), str(whl)],
                       capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return whl, target


def test_wheel_holds_models_vocab_license_and_no_solutions(wheel):
    whl, _ = wheel
    names = set(zipfile.ZipFile(whl).namelist())
    need = ["sd_from_scratch/bpe_simple_vocab_16e6.txt.gz", "sd_from_scratch/shipped/digit_classifier.safetensors",
            "sd_from_scratch/shipped/tiny-sd/model_index.json",
            "sd_from_scratch/shipped/tiny-sd/unet/diffusion_pytorch_model.safetensors"]
    need += [f"sd_from_scratch/shipped/{f.relative_to(ROOT / 'data').as_posix()}" for f in (ROOT / "data").rglob("*") if f.is_file()]
    assert not [n for n in need if n not in names], [n for n in need if n not in names]
    assert any(n.endswith("/LICENSE") and ".dist-info/" in n for n in names)
    assert not [n for n in names if "exercises/solutions" in n], "the teachers' solutions must not ship in the wheel"
    meta = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    deps = [l.split(":", 1)[1].strip().lower() for l in meta.splitlines() if l.startswith("Requires-Dist:") and "extra ==" not in l]
    assert deps and not [d for d in deps if d.startswith(("diffusers", "transformers", "accelerate"))], deps


def _run_outside(target, code_or_args, cwd):
    "A fresh interpreter that can see the installed wheel and the venv's dependencies, but not the checkout."
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SDFS_TINY_SD")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    # -S: no site-packages (and so no editable install of the checkout); -I would also drop PYTHONPATH
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_installed_wheel_generates_from_another_folder(wheel, tmp_path):
    _, target = wheel
    code = ("import sd_from_scratch, numpy as np; from pathlib import Path\n"
            "assert Path(sd_from_scratch.__file__).resolve().is_relative_to(Path(%r).resolve()), sd_from_scratch.__file__\n"
            "pipe = sd_from_scratch.load_default(device='cpu'); pipe.progress = False\n"
            "a = pipe('a red 7 on a blue background', steps=4, seed=0, output_type='np')\n"
            "assert a.shape[1:] == (32, 32, 3) and np.isfinite(a).all() and a.std() > 0.02\n"
            "if (Path(sd_from_scratch.__file__).parent / 'shipped' / 'tiny-sd-inpainting').exists():\n"
            "    p9 = sd_from_scratch.load_default('inpainting', device='cpu'); assert p9.unet_in_channels == 9\n"
            "print('ok', sd_from_scratch.__file__)") % str(target)
    r = _run_outside(target, code, tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
    r = _run_outside(target, ["-m", "sd_from_scratch.cli", "generate", "a red 7 on a blue background", "--steps", "20",
                              "--seed", "1", "--out", "seven.png", "--device", "cpu"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from PIL import Image
    from sd_from_scratch.cli import read_parameters
    assert Image.open(tmp_path / "seven.png").size == (32, 32)
    assert read_parameters(tmp_path / "seven.png")["prompt"] == "a red 7 on a blue background"
    import numpy as np, torch                                       # ... and it is a red 7 on blue, as the digit judge reads it
    from sd_from_scratch.toy import COLOURS, load_digit_classifier, read_images
    x = torch.from_numpy(np.asarray(Image.open(tmp_path / "seven.png").convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None]
    r = read_images(x, load_digit_classifier())
    assert (int(r["digit"][0]), COLOURS[int(r["fg"][0])], COLOURS[int(r["bg"][0])]) == (7, "red", "blue")


def test_version_agrees_with_settings():
    "settings.ini's `version` (what the wheel is called) and `sd_from_scratch.__version__` (index.ipynb) agree."
    import configparser, sd_from_scratch
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    assert sd_from_scratch.__version__ == cfg["DEFAULT"]["version"], \
        "bump `__version__` in nbs/index.ipynb together with settings.ini's version"
