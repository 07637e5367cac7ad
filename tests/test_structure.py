"""Structure guards (issue #17): imports point from later lessons to earlier ones, no import circle,
pyflakes is clean on the package, and every module docstring is a whole sentence."""
import ast, json, os, re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("SDFS_ROOT") or Path(__file__).resolve().parents[1])
PKG = "sd_from_scratch"


def lesson_order(nbs: Path) -> dict:
    "Module name → rank of the numbered notebook that exports it (nbs/NN*.ipynb sorted by file name)."
    order = {}
    for rank, nb in enumerate(sorted(p for p in nbs.glob("*.ipynb") if re.match(r"\d", p.name))):
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            for m in re.finditer(r"^#\|\s*(?:default_exp|exports?)\s+([A-Za-z_][\w.]*)", src, re.M):
                order.setdefault(m.group(1), rank)
    return order


def package_imports(pkg: Path, name: str = PKG) -> dict:
    "Module → set of package modules it imports anywhere in its body (lazy imports inside functions count)."
    graph = {}
    for f in pkg.rglob("*.py"):
        if f.name in ("_modidx.py",): continue
        mod = ".".join(f.relative_to(pkg).with_suffix("").parts)
        mod = mod[:-len(".__init__")] if mod.endswith(".__init__") else mod
        here = mod.split(".")[:-1] if f.name != "__init__.py" else mod.split(".")
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                    target = ".".join(base + ([node.module] if node.module else []))
                    names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
                elif node.module and node.module.split(".")[0] == name:
                    names = [node.module[len(name) + 1:]] if node.module != name else [a.name for a in node.names]
                else: continue
                deps.update(n.strip(".") for n in names if n.strip("."))
            elif isinstance(node, ast.Import):
                deps.update(a.name[len(name) + 1:] for a in node.names if a.name.startswith(name + "."))
        graph[mod] = {d for d in deps if d != mod}
    return graph


def wrong_way_imports(graph: dict, order: dict) -> list:
    "Pairs (module, import) where a lesson's module imports one from a later lesson."
    bad = []
    for mod, deps in graph.items():
        if mod not in order: continue
        for d in deps:
            if d in order and order[d] > order[mod]: bad.append((mod, d))
    return sorted(bad)


def import_cycles(graph: dict) -> list:
    "Each import circle among package modules, as a list of modules (depth-first search)."
    cycles, state = [], {}
    def visit(m, stack):
        state[m] = 1; stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d not in graph: continue
            if state.get(d) == 1: cycles.append(stack[stack.index(d):] + [d])
            elif not state.get(d): visit(d, stack)
        stack.pop(); state[m] = 2
    for m in sorted(graph):
        if not state.get(m): visit(m, [])
    return cycles


def bad_docstrings(pkg: Path) -> list:
    "Modules whose docstring is missing or does not end a sentence."
    bad = []
    for f in sorted(pkg.rglob("*.py")):
        if f.name in ("_modidx.py",): continue
        doc = ast.get_docstring(ast.parse(f.read_text()))
        if not doc or not re.search(r"[.!?][)\"'”»]?$", doc.strip()): bad.append(f"{f.relative_to(pkg)}: {doc!r}"[:200])
    return bad


def pyflakes_report(path: Path) -> list:
    out = subprocess.run([sys.executable, "-m", "pyflakes", str(path)], capture_output=True, text=True)
    return [l for l in (out.stdout + out.stderr).splitlines() if l.strip() and "_modidx.py" not in l]


def test_no_wrong_way_imports():
    bad = wrong_way_imports(package_imports(ROOT / PKG), lesson_order(ROOT / "nbs"))
    assert not bad, "modules import a later lesson's module (move the shared piece to the earlier lesson): " + str(bad)


def test_no_import_circles():
    cycles = import_cycles(package_imports(ROOT / PKG))
    assert not cycles, f"import circles: {cycles}"


def test_pyflakes_clean():
    report = pyflakes_report(ROOT / PKG)
    assert not report, "pyflakes:\n" + "\n".join(report)


def test_module_docstrings_are_sentences():
    bad = bad_docstrings(ROOT / PKG)
    assert not bad, "module docstrings that stop mid-sentence (nbdev takes the notebook's `>` line):\n" + "\n".join(bad)


def test_the_guards_catch_a_broken_package(tmp_path):
    "Each guard fails on a small package built to break it, so none of them can pass vacuously."
    pkg, nbs = tmp_path / PKG, tmp_path / "nbs"; pkg.mkdir(); nbs.mkdir()
    for i, m in enumerate(["early", "late"]):
        nb = {"cells": [{"cell_type": "code", "source": [f"#| default_exp {m}"], "metadata": {}}]}
        (nbs / f"0{i}_{m}.ipynb").write_text(json.dumps(nb))
    (pkg / "__init__.py").write_text('"A package."\n')
    (pkg / "early.py").write_text('"""Early, half a"""\nimport os\ndef f():\n    from .late import g\n    return g\n')
    (pkg / "late.py").write_text('"Late."\nfrom .early import f\n')
    graph = package_imports(pkg)
    assert wrong_way_imports(graph, lesson_order(nbs)) == [("early", "late")]
    assert import_cycles(graph)
    assert any("os" in l for l in pyflakes_report(pkg))
    assert any("early.py" in l for l in bad_docstrings(pkg))
