"""The GPU path without a GPU: scripts/setup_env.sh against a fake `nvidia-smi` and a fake CUDA torch (it must reuse that
torch and never reach for an outside index), and bench/gpu_all.py's CPU dry run (the device script cannot rot)."""
import json, os, shutil, stat, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

# ---- scripts/setup_env.sh with stubs: no real venv, no real pip, no network

# A stand-in for python, run by the real interpreter with site-packages off (-S). It logs every call; `-m venv` makes a
# venv of stubs (pyvenv.cfg says whether system site packages are visible); `-m pip` only records (a `torch==…` install
# gives that venv its own CPU torch); `-c CODE` runs CODE seeing only the torch this python would see.
FAKE_PY = r'''#!{exe} -S
import json, os, shutil, sys
from pathlib import Path
me, args = Path(__file__).absolute(), sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f: f.write(json.dumps([str(me)] + args) + "\n")
venv = me.parent.parent if (me.parent.parent / "pyvenv.cfg").exists() else None
def fake_torch(where, cuda):
    (where / "torch").mkdir(parents=True, exist_ok=True)
    (where / "torch" / "__init__.py").write_text(f"class cuda:\n    is_available = staticmethod(lambda: {{cuda}})\n")
if args[:2] == ["-m", "venv"]:
    d = Path(args[-1]); (d / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(me, d / "bin" / "python")
    (d / "pyvenv.cfg").write_text(f"include-system-site-packages = {{str('--system-site-packages' in args).lower()}}\n")
elif args[:2] == ["-m", "pip"]:
    if "--version" in args: print("pip 0.0 (fake)")
    if "install" in args and venv:                                  # each named package appears in the venv
        for i, a in enumerate(args[args.index("install") + 1:], args.index("install") + 1):
            if a.startswith((".", "-")) or args[i - 1] in ("--find-links", "-f"): continue
            name = a.split("=")[0].split("<")[0].split(">")[0]
            if name == "torch": fake_torch(venv / "own", False)          # a registry torch: a CPU build here
            else: (venv / "own" / name).mkdir(parents=True, exist_ok=True); (venv / "own" / name / "__init__.py").write_text("")
elif args[:1] == ["-c"]:
    paths = [os.environ["FAKE_SYS_SITE"]] if venv is None else (
        [str(venv / "own")] * (venv / "own").exists()
        + [os.environ["FAKE_SYS_SITE"]] * ("true" in (venv / "pyvenv.cfg").read_text()))
    sys.path[:0] = paths
    exec(compile(args[1], "<string>", "exec"), {{"__name__": "__main__"}})
elif not (args and args[0].endswith(".py")):                         # a script: only logged
    sys.exit(f"fake python: unexpected arguments {{args}}")
'''


def _exe(path: Path, text: str):
    path.write_text(text); path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def run_setup(tmp_path, gpu: bool, system_torch: str | None, wheels: bool = False):
    "Run a copy of setup_env.sh with a fake nvidia-smi and python; `system_torch` None/'cpu'/'cuda'. → (rc, calls, stderr)"
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for f in ("scripts/setup_env.sh", "settings.ini", "setup.py"): shutil.copy(ROOT / f, repo / f)
    if wheels: (repo / "wheels").mkdir(); (repo / "wheels" / "diffusers-0.42.1-py3-none-any.whl").write_bytes(b"")
    bin_, site = tmp_path / "bin", tmp_path / "system-site"
    bin_.mkdir(); site.mkdir()
    _exe(bin_ / "nvidia-smi", "#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-fake)'\n" if gpu else
         "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9\n")
    _exe(bin_ / "python3", FAKE_PY.format(exe=sys.executable))
    if system_torch:
        (site / "torch").mkdir()
        (site / "torch" / "__init__.py").write_text(
            f"class cuda:\n    is_available = staticmethod(lambda: {system_torch == 'cuda'})\n")
    log = tmp_path / "calls.jsonl"
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path), "FAKE_LOG": str(log), "FAKE_SYS_SITE": str(site)}
    r = subprocess.run(["bash", str(repo / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
    return r.returncode, calls, r.stdout + r.stderr


def pip_calls(calls): return [c[1:] for c in calls if c[1:3] == ["-m", "pip"]]
def venv_calls(calls): return [c[1:] for c in calls if c[1:3] == ["-m", "venv"]]

OUTSIDE = ("download.pytorch.org", "--index-url", "--extra-index-url", "-i")

def assert_no_outside_index(calls):
    for c in pip_calls(calls):
        bad = [a for a in c if any(a == o or a.startswith(o + "=") or "download.pytorch.org" in a for o in OUTSIDE)]
        assert not bad, f"pip reached for an outside index: {c}"


def test_setup_script_never_names_an_outside_index():
    code = [l for l in (ROOT / "scripts" / "setup_env.sh").read_text().splitlines() if not l.lstrip().startswith("#")]
    assert not [l for l in code if "download.pytorch.org" in l or "index-url" in l]


def test_setup_gpu_reuses_the_system_cuda_torch(tmp_path):
    rc, calls, out = run_setup(tmp_path, gpu=True, system_torch="cuda")
    assert rc == 0, out
    assert venv_calls(calls) == [["-m", "venv", "--system-site-packages", ".venv"]]
    assert_no_outside_index(calls)
    installs = [c for c in pip_calls(calls) if "install" in c]
    assert not [c for c in installs if any(a.startswith("torch") for a in c)], f"torch was installed: {installs}"
    assert any("-e" in c and ".[dev]" in c for c in installs)
    assert "warning" not in out


def test_setup_cpu_is_unchanged(tmp_path):
    rc, calls, out = run_setup(tmp_path, gpu=False, system_torch="cpu")
    assert rc == 0, out
    assert venv_calls(calls) == [["-m", "venv", ".venv"]]          # no system site packages on a CPU machine
    assert_no_outside_index(calls)
    installs = [c for c in pip_calls(calls) if "install" in c]
    assert any("torch==2.13.0" in c for c in installs) and any(".[dev]" in c for c in installs)
    assert not any("--no-index" in c for c in installs)


def test_setup_gpu_with_cpu_system_torch_warns_and_stays_on_the_registry(tmp_path):
    rc, calls, out = run_setup(tmp_path, gpu=True, system_torch="cpu")
    assert rc == 0, out
    assert venv_calls(calls) == [["-m", "venv", ".venv"]]
    assert_no_outside_index(calls)
    assert "does not see CUDA" in out


def test_setup_offline_wheels_folder(tmp_path):
    rc, calls, out = run_setup(tmp_path, gpu=True, system_torch="cuda", wheels=True)
    assert rc == 0, out
    assert_no_outside_index(calls)
    installs = [c for c in pip_calls(calls) if "install" in c]
    assert installs and all("--no-index" in c and "wheels" in c for c in installs), installs


# ---- bench/gpu_all.py: the CPU dry run is the device script's own code path (minus CUDA graphs)

def _gpu_all():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_all
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return gpu_all


def test_gpu_all_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_all.sh"), "--dry-run", "--out", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp_path / "gpu_all.json").read_text())
    par = rep["parity"]
    assert par["ok"] and par["eps_ours_vs_diffusers"] <= 1e-4 and par["image_ours_vs_diffusers"] <= 1e-4, par
    assert par["image_size"] == [128, 128]
    rows = {row["key"]: row for row in rep["rows"]}
    assert list(rows) == list(_gpu_all().VARIANTS)
    for k in ("diffusers", "ours", "ours_cl_fused", "ours_compile"):
        assert rows[k]["status"] == "ok" and rows[k]["its"] > 0 and rows[k]["d_eps"] <= 1e-4, rows[k]
    assert "fullgraph=True failed" not in rows["ours_compile"]["note"]      # dynamo traced our UNet in one graph
    assert rows["ours_compile_cg"] == {**rows["ours_compile_cg"], "status": "skipped", "note": "CUDA only"}
    last = r.stdout[r.stdout.rindex("# bench/gpu_all.py"):]                 # the table is printed last
    assert "| ours eager |" in last and "DRY RUN" in last and last.rstrip().splitlines()[-1].startswith("written:")
    assert (tmp_path / "gpu_all.md").read_text() in r.stdout


def test_gpu_all_budget_fallback(tmp_path):
    "A variant still running when the budget ends is killed; its row says so and the table keeps the rest."
    g = _gpu_all()
    import argparse
    a = argparse.Namespace(dry_run=True, compile_mode=None)
    row = g.run_child("ours_compile", a, g.settings(True), tmp_path, seconds=0.2)
    assert row["status"] == "timeout" and "time budget" in row["note"]
    rep = dict(dry_run=True, budget_s=1, elapsed_s=1, what="x", parity=None,
               info=dict(date="d", gpu="g", torch="t", cuda=None, diffusers="d", transformers="t", python="p", dtype="float32"),
               rows=[dict(key="diffusers", label="diffusers eager SDPA", its=2.0, peak_mib=10.0, reserved_mib=12.0, d_eps=0.0,
                          first_call_s=0.1, status="ok", note=""),
                     dict(key="ours", label="ours eager", its=4.0, peak_mib=5.0, reserved_mib=6.0, d_eps=1e-3,
                          first_call_s=0.1, status="ok", note=""), row])
    md = g.table(rep)
    assert "| ours eager | 4.00 | 2.00 | 5 | 0.50 |" in md and "timeout: killed after" in md
    assert "Fastest of ours: ours eager: 2.00× diffusers' it/s, memory 0.50×" in md


def test_gpu_all_installs_missing_packages_offline_from_wheels(tmp_path):
    "bench/gpu_all.sh on a GPU image without diffusers: a system-site venv, pip --no-index from wheels/, nothing else."
    repo, bin_, site = tmp_path / "repo", tmp_path / "bin", tmp_path / "system-site"
    for d in (repo / "bench", repo / "wheels", bin_, site / "torch"): d.mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "gpu_all.sh", repo / "bench")
    (repo / "wheels" / "diffusers-0.42.1-py3-none-any.whl").write_bytes(b"")
    (site / "torch" / "__init__.py").write_text("class cuda:\n    is_available = staticmethod(lambda: True)\n")
    _exe(bin_ / "python3", FAKE_PY.format(exe=sys.executable))
    log, venv = tmp_path / "calls.jsonl", tmp_path / "gpu-venv"
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path), "FAKE_LOG": str(log), "FAKE_SYS_SITE": str(site),
           "SDFS_GPU_VENV": str(venv)}
    r = subprocess.run(["bash", str(repo / "bench" / "gpu_all.sh"), "--budget", "300"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    assert venv_calls(calls) == [["-m", "venv", "--system-site-packages", str(venv)]]
    assert_no_outside_index(calls)
    installs = [c for c in pip_calls(calls) if "install" in c]
    assert installs == [["-m", "pip", "install", "-q", "--no-index", "--find-links", "wheels", "diffusers", "transformers"]]
    assert calls[-1] == [str(venv / "bin" / "python"), "bench/gpu_all.py", "--budget", "300"]   # then the bench runs
