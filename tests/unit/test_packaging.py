"""Packaging: the pins (requirements.txt, mirrored in envs/cvaudit.yaml), lint, the layers, the tests' layout."""
import re

import pytest
import yaml

from conftest import REPO


def _pins(lines):
    return {re.split("==", pin)[0].lower(): pin.split("==")[1].split("#")[0].strip() for pin in lines if "==" in pin}


def test_conda_env_matches_requirements():
    files = ("requirements.txt", "requirements-nodeps.txt")
    req = _pins(line.strip() for f in files for line in (REPO / f).read_text().splitlines() if not line.startswith("#"))
    env = yaml.safe_load((REPO / "envs" / "cvaudit.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == req and req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"


def test_readme_opens_with_the_two_commands():
    head = (REPO / "README.md").read_text().splitlines()[:12]
    assert any("make demo" in line for line in head) and any("make test" in line for line in head)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def _imports_of_the_package() -> dict:
    """{module: the cvaudit modules it imports}, function-level imports included."""
    import ast
    root = REPO / "scripts" / "cvaudit"
    mods = {}
    for p in root.rglob("*.py"):
        name = ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - (n.level - 1)] if n.level else []
                target = ".".join(base + ([n.module] if n.module else []))
                deps |= {target} | {f"{target}.{a.name}" for a in n.names}
            elif isinstance(n, ast.Import):
                deps |= {a.name for a in n.names}
        mods[name] = deps
    return {k: {d for d in v if d in mods and d != k} for k, v in mods.items()}


def test_the_package_has_no_import_cycle():
    graph = _imports_of_the_package()
    assert graph["cvaudit.explain.trust"] >= {"cvaudit.net.pixel_space", "cvaudit.explain.methods"}  # the check sees real edges
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for d in sorted(graph[m]):
            assert state.get(d) != "open", "import cycle: " + " -> ".join(path[path.index(d):] + [d])
            if d not in state:
                visit(d)
        path.pop()
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m)


# The subpackages from the bottom up (CONTRIBUTING.md, "Where the code lives"): a module imports its own
# subpackage and those below it, never one above.
LAYERS = ["core", "net", "data", "model", "explain", "represent", "robust", "report"]


def test_no_module_imports_a_layer_above_its_own():
    """Within the subpackages, imports point down the stack. The modules at the top (what the Snakefile
    reads) sit at the layer of the highest subpackage module they import, directly or not: a subpackage
    module may import one of them only from that layer or above, so no arrow runs upward through them."""
    graph = _imports_of_the_package()

    def own(m):
        parts = m.split(".")
        return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None

    def layer(m, seen=()):  # a top-level module: the highest layer it reaches
        if own(m) is not None:
            return own(m)
        return max([layer(d, seen + (m,)) for d in graph[m] if d not in seen] + [-1])
    assert {m.split(".")[1] for m in graph if own(m) is not None} == set(LAYERS)
    assert layer("cvaudit.config") == 0 and layer("cvaudit.estimate") >= 1  # the check sees real edges
    assert graph["cvaudit.robust.slices"] >= {"cvaudit.robust.calibrate", "cvaudit.data.image_properties"}
    upward = sorted(f"{m} -> {d}" for m in graph if own(m) is not None for d in graph[m] if layer(d) > own(m))
    assert upward == [], "imports from a lower layer to a higher one:\n" + "\n".join(upward)
    for sub in LAYERS:  # empty: importing one module of a subpackage imports nothing else
        assert (REPO / "scripts" / "cvaudit" / sub / "__init__.py").read_text() == ""


def test_compare_results_names_every_changed_missing_and_new_number(tmp_path):
    """tools/compare_results.py: the check that a refactor moved no number of the demo."""
    import json
    import subprocess
    import sys
    a, b = tmp_path / "a", tmp_path / "b"
    for root, acc, extra in ((a, 0.8, {}), (b, 0.8, {})):
        (root / "m" / "report").mkdir(parents=True)
        doc = {"metrics": {"accuracy": acc, "n": 10}, "provenance": {"generated": str(root), "stage_runs": [1]},
               "robustness": {"randomisation": {"chance": 0.1}}, **extra}
        (root / "m" / "report" / "summary.json").write_text(json.dumps(doc))
    tool = [sys.executable, str(REPO / "tools" / "compare_results.py"), str(a), str(b)]
    p = subprocess.run(tool, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("identical: 3 values")  # time stamps and run times skipped
    doc = json.loads((b / "m" / "report" / "summary.json").read_text())
    doc["metrics"]["accuracy"] = 0.8000001
    doc["robustness"] = {"shuffled_labels": {"chance": 0.1}}
    (b / "m" / "report" / "summary.json").write_text(json.dumps(doc))
    p = subprocess.run(tool, capture_output=True, text=True)
    assert p.returncode == 1 and "changed  m/report/summary.json:metrics/accuracy: 0.8 -> 0.8000001" in p.stdout
    assert "missing  m/report/summary.json:robustness/randomisation/chance" in p.stdout
    assert "new      m/report/summary.json:robustness/shuffled_labels/chance" in p.stdout
    p = subprocess.run(tool + ["--rename", "randomisation=shuffled_labels", "--tol", "1e-6"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout


@pytest.mark.slow
def test_a_stage_start_is_deterministic_without_importing_what_it_does_not_use():
    """A job's start: seed_everything turns on torch's deterministic algorithms (warn only) as
    torch.use_deterministic_algorithms does, without importing torch._dynamo (over a second a job); the
    modules of the explain, render, agreement, evaluation, calibration, representation and training jobs import
    neither torchvision nor scipy.stats (a model cvaudit builds needs neither: the transforms are torch's own)."""
    import subprocess
    import sys
    probe = """
import sys, torch
from cvaudit.net.pixel_space import seed_everything
seed_everything(0, 1)
assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
import cvaudit.explain.explain, cvaudit.report.render_report, cvaudit.explain.method_agreement, cvaudit.core.shards
import cvaudit.model.evaluate_model, cvaudit.robust.calibrate, cvaudit.represent.represent, cvaudit.model.train_model
from PIL import Image
from cvaudit.net.transforms import eval_transform
eval_transform({'input_size': 8, 'resize': 'center_crop', 'mean': [0] * 3, 'std': [1] * 3})(Image.new('RGB', (5, 9)))
heavy = [m for m in ("torch._dynamo", "torchvision", "scipy.stats", "timm", "captum") if m in sys.modules]
assert not heavy, heavy
"""
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO / "scripts"), "PATH": ""})
    assert r.returncode == 0, r.stderr[-2000:]


def test_ruff_finds_nothing():
    """make lint's Python half (rules in pyproject.toml), run by the suite so that CI runs it."""
    import subprocess
    import sys
    from pathlib import Path
    ruff = Path(sys.executable).parent / "ruff"
    p = subprocess.run([str(ruff), "check", "scripts", "tools", "tests"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:]


def test_the_rule_files_are_formatted():
    """make lint's workflow half: snakefmt (settings in pyproject.toml) leaves the Snakefile and rules/ as they are."""
    import subprocess
    import sys
    from pathlib import Path
    snakefmt = Path(sys.executable).parent / "snakefmt"
    p = subprocess.run([str(snakefmt), "--check", "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]


def test_the_tests_mirror_the_package_and_the_workflow_runs_have_their_folder():
    """tests/unit/<subpackage>/ for the unit tests of cvaudit/<subpackage>/, tests/workflow/ for exactly the tests
    that run the workflow through Snakemake (marked e2e)."""
    import ast
    subpackages = {p.name for p in (REPO / "scripts" / "cvaudit").iterdir() if (p / "__init__.py").exists()} - {"__pycache__"}
    assert {p.name for p in (REPO / "tests" / "unit").iterdir() if p.is_dir() and p.name != "__pycache__"} == subpackages

    def e2e(node):
        return any(ast.unparse(d).startswith("pytest.mark.e2e") for d in getattr(node, "decorator_list", []))
    for path in (REPO / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        module_marked = any(isinstance(n, ast.Assign) and "pytestmark" in ast.unparse(n.targets[0]) and "e2e" in ast.unparse(n.value)
                            for n in tree.body)
        shared = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("test_")]
        assert shared == [], f"{path.name} imports from {shared}: shared helpers belong in tests/conftest.py"
        tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        marked = [n.name for n in tests if module_marked or e2e(n)]
        if path.parent.name == "workflow":
            assert len(marked) == len(tests) > 0, f"{path.name}: tests that run no workflow belong in tests/unit/"
        else:
            assert marked == [], f"{path.name}: {marked} run the workflow: tests/workflow/"
