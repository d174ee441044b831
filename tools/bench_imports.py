#!/usr/bin/env python
"""What each job pays to start: the import time of every entry script's module, and of each heavy
library a job imports only when it uses it (torchvision's transforms, timm, captum, ...).

Each import runs in a fresh interpreter (`python -X importtime`), all of them in turn, `--repeats`
rounds (interleaved, so a drift in this machine's speed hits every row alike); the table gives the
median and the min-max of the rounds. A row over its budget is marked, and the script exits 1.

    .venv/bin/python tools/bench_imports.py [--repeats 5] [--out results/bench/imports.json]
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what a job imports before it computes, by entry script (scripts/*.py), and the budget (s) on this
# 2-core machine. torch alone is ~1.3 s; torchvision adds ~1.2 s (it imports torch._dynamo).
BUDGET = 2.4  # seconds: torch and the stage's own code, no torchvision, no scipy.stats, no plotting
BUDGETS = {"render_report": 1.2, "compare_models": 1.2, "gate": 0.3, "gate_check": 0.3, "side_by_side": 0.3,
           "ingest_dataset": 0.6, "fit_baseline": 0.6,
           "sharded (invariance)": 2.8}  # its transforms are torchvision's (v2 functionals on whole batches)
# the libraries imported only by the jobs that use them (inside the function that needs them)
LAZY = ['torch', 'torch._dynamo', 'torchvision', 'timm', 'captum.attr',
        'lime.lime_image', 'shap', 'skimage.segmentation.slic_superpixels', 'torchattacks',
        'scipy.stats', 'sklearn.manifold', 'matplotlib.pyplot', 'jinja2', 'weasyprint']


def entry_modules() -> dict[str, str]:
    """Each entry script's import line(s) of cvaudit, as one statement."""
    out = {}
    for script in sorted((ROOT / "scripts").glob("*.py")):
        lines = [ln for ln in script.read_text().splitlines() if re.match(r"from cvaudit[.\w]* import ", ln)]
        if lines:
            out[script.stem] = "; ".join(lines)
    sharded = out.pop("sharded")  # one entry script for three stages: it imports the stage's module
    for stage in ("explain", "invariance", "adversarial"):
        out[f"sharded ({stage})"] = f"{sharded}; import cvaudit.{stage}"
    return out


def import_time(statement: str) -> tuple[float, list[str]]:
    """Seconds to run `statement` in a fresh interpreter, and the heavy libraries it loaded."""
    probe = f"import sys; {statement}; print([m for m in {LAZY!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], capture_output=True, text=True,
                       cwd=ROOT, env={"PYTHONPATH": str(ROOT / "scripts"), "PATH": ""})
    if r.returncode:
        raise SystemExit(f"{statement}: {r.stderr[-2000:]}")
    total = 0
    for line in r.stderr.splitlines():  # "import time: self | cumulative | name": top-level rows only
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if m and not m.group(2).startswith(" "):
            total += int(m.group(1))
    return total / 1e6, ast.literal_eval(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results/bench/imports.json")
    a = ap.parse_args(argv)
    rows = {f"script {k}": v for k, v in entry_modules().items()}
    rows.update({f"library {m}": f"import {m}" for m in LAZY})
    # a stage's start also seeds and sets torch's deterministic flag; torch.use_deterministic_algorithms
    # imports torch._dynamo (through torch._inductor's config), cvaudit's seed_everything does not
    rows["start: seed_everything"] = "from cvaudit.net.pixel_space import seed_everything; seed_everything(0, 1)"
    rows["start: torch.use_deterministic_algorithms"] = "import torch; torch.use_deterministic_algorithms(True)"
    times: dict[str, list[float]] = {k: [] for k in rows}
    loads: dict[str, list[str]] = {}
    for _ in range(a.repeats):
        for name, stmt in rows.items():
            t, loaded = import_time(stmt)
            times[name].append(t)
            loads[name] = loaded
    table, over = [], []
    for name, ts in times.items():
        budget = BUDGETS.get(name.split(" ", 1)[1], BUDGET) if name.startswith("script") else None
        med = statistics.median(ts)
        row = {"import": name, "median_s": round(med, 3), "min_s": round(min(ts), 3), "max_s": round(max(ts), 3),
               "budget_s": budget, "loads": loads[name]}
        table.append(row)
        if budget is not None and med > budget:
            over.append(name)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"repeats": a.repeats, "rows": table}, indent=2))
    print("| import | median s | min-max s | budget s | heavy libraries it loads |")
    print("|---|---|---|---|---|")
    for r in table:
        mark = " **over**" if r["import"] in over else ""
        print(f"| {r['import']} | {r['median_s']:.2f}{mark} | {r['min_s']:.2f}-{r['max_s']:.2f} | "
              f"{r['budget_s'] if r['budget_s'] is not None else ''} | {', '.join(r['loads'])} |")
    if over:
        print(f"over budget: {', '.join(over)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
