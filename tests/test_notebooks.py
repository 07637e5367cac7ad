"""Every notebook is a test: run each one top to bottom with nbdev's own runner (one pytest test per notebook).

Cells flagged `#| notest` or `#| slow` (settings.ini `tst_flags`) are skipped, as `nbdev_test` does;
with SDFS_SLOW=1 the `slow` cells run too."""
import os, shutil, subprocess, sys, tempfile
from pathlib import Path
import pytest
from nbdev import test as nbdev_test_module   # (imported as a module so pytest doesn't collect its test_nb)

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / "nbs").rglob("*.ipynb")
             if not any(part.startswith(("_", ".")) for part in p.relative_to(ROOT / "nbs").parts))

@pytest.mark.parametrize("nb", NBS, ids=[str(p.relative_to(ROOT / "nbs")) for p in NBS])
def test_notebook_runs(nb):
    force = ["slow"] if os.environ.get("SDFS_SLOW") else []
    os.environ.setdefault("MPLBACKEND", "Agg")
    ok, secs = nbdev_test_module.test_nb(nb, skip_flags=["notest", "slow"], force_flags=force, basepath=ROOT)
    assert ok, f"{nb.name} raised (traceback above)"

def test_export_is_in_sync(tmp_path):
    "Running nbdev_export on a copy of the notebooks must reproduce sd_from_scratch/ exactly."
    dst = tmp_path / "repo"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "outputs"))
    exe = Path(sys.executable).parent / "nbdev_export"
    subprocess.run([str(exe)], cwd=dst, check=True, capture_output=True)
    def pyfiles(d): return {p.relative_to(d): p.read_text() for p in d.rglob("*.py") if "__pycache__" not in p.parts}
    ours, fresh = pyfiles(ROOT / "sd_from_scratch"), pyfiles(dst / "sd_from_scratch")
    stale = sorted(str(k) for k in set(ours) | set(fresh) if ours.get(k) != fresh.get(k))
    assert not stale, f"notebooks and sd_from_scratch/ disagree in {stale}: run `nbdev_clean && nbdev_export` and commit both"

def test_notebooks_open_in_the_project_kernel_and_never_export():
    "Every notebook names the python3 kernel (no 'Select Kernel' dialog) and none runs nbdev_export when a learner runs it."
    import json
    bad = []
    for nb in NBS:
        d = json.loads(nb.read_text())
        if d.get("metadata", {}).get("kernelspec", {}).get("name") != "python3": bad.append(f"{nb.name}: no python3 kernelspec")
        for c in d["cells"]:
            if c["cell_type"] == "code" and "nbdev_export(" in "".join(c["source"]): bad.append(f"{nb.name}: runs nbdev_export")
    assert not bad, "\n".join(bad)
