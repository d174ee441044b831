#!/usr/bin/env python
"""Where `make test`'s time goes: the suite as `make test` runs it, with the CPU of each test and of each workflow job.

    .venv/bin/python tools/profile_tests.py [--out build/profile] [PYTEST ARGS ...]

Runs pytest on two workers (as the Makefile does) with CVAUDIT_TEST_CPU_LOG set: tests/conftest.py then records, per
test, its wall time and the CPU it and the processes it waited for used (snakemake, every job, Chromium). The
test folders are kept under OUT/basetemp, so every workflow job's benchmark TSV (Snakemake's cpu_time) is summed
by rule and by kind of model. Writes OUT/tests.tsv and prints three tables: by group (a workflow run and the tests
that share it), the 25 costliest tests, and the jobs by rule. Run it alone: it is a full `make test`.
"""
import argparse
import collections
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def table(rows, header):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "build" / "profile")
    args, pytest_args = ap.parse_known_args()
    out = args.out.resolve()
    log = out / "tests.tsv"
    out.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    env = {**os.environ, "CVAUDIT_TEST_CPU_LOG": str(log), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t0, c0 = time.perf_counter(), os.times()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder",
                    "-p", "no:cacheprovider", f"--basetemp={out / 'basetemp'}", *pytest_args], cwd=REPO, env=env)
    c1 = os.times()
    print(f"\nwall {time.perf_counter() - t0:.0f} s, CPU of the whole suite "
          f"{c1.children_user - c0.children_user + c1.children_system - c0.children_system:.0f} s\n")

    tests = [(r[0], r[1], float(r[2]), float(r[3])) for r in csv.reader(log.open(), delimiter="\t")]
    by_group = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for _, group, wall, cpu in tests:
        g = by_group["unit tests" if group == "-" else group]
        g[0] += 1
        g[1] += wall
        g[2] += cpu
    table(sorted(([g, n, f"{w:.0f}", f"{c:.0f}"] for g, (n, w, c) in by_group.items()), key=lambda r: -float(r[3])),
          ["group", "tests", "wall s", "CPU s"])
    table([[t[0][-90:], f"{t[2]:.0f}", f"{t[3]:.0f}"] for t in sorted(tests, key=lambda t: -t[3])[:25]],
          ["test", "wall s", "CPU s"])

    jobs, seen = collections.defaultdict(lambda: [0, 0.0]), set()
    for tsv in (out / "basetemp").rglob("benchmarks/**/*.tsv"):  # benchmarks/<rule>/<wildcards>.tsv
        text = tsv.read_text()
        if (tsv.name, text) in seen:  # a test's copy of a project folder
            continue
        seen.add((tsv.name, text))
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
        if rows and rows[-1].get("cpu_time") not in (None, "", "NA"):
            jobs[tsv.parent.name][0] += 1
            jobs[tsv.parent.name][1] += float(rows[-1]["cpu_time"])
    table(sorted(([r, n, f"{c:.0f}", f"{c / n:.1f}"] for r, (n, c) in jobs.items()), key=lambda r: -float(r[2])),
          ["rule", "jobs", "CPU s", "CPU s / job"])
    print(f"{sum(n for n, _ in jobs.values())} jobs, {sum(c for _, c in jobs.values()):.0f} CPU-s")


if __name__ == "__main__":
    main()
