#!/usr/bin/env python
"""Ingestion at scale: `snakemake -n` time and peak memory, and ingest throughput, at 10^4, 10^5 and
10^6 image files, against the time to list and stat the same files in Python.

Each size is an imagefolder of 10 classes of distinct 8x8 grey PNGs (written once into --dir and
reused). Per size:
  list      os.scandir over the class folders + os.stat of every file (what any tool must do);
  dry cold  `snakemake -n` with no hash cache: lists, stats and hashes every file (the first run);
  dry warm  `snakemake -n` again: lists and stats, hashes nothing (every later invocation);
  ingest    `snakemake results/data/bench/manifest.csv`: the ingest job (decode check of every file,
            manifest), with the cache warm, as after the dry run.
`list` and `dry warm` are interleaved, --reps times each, and reported as medians. Peak memory is
the Snakemake process tree's maximum resident set (its own and its jobs').

    .venv/bin/python tools/bench_ingest.py [--sizes 10000 100000 1000000] [--dir /tmp/cvaudit-bench]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CLASSES = 10


def _write_chunk(args):
    folder, start, stop = args
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(start)
    for k in range(start, stop):
        a = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        a[0, :4] = np.frombuffer(k.to_bytes(4, "big"), np.uint8)  # distinct content
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=1)
        (Path(folder) / f"c{k % CLASSES}" / f"img{k:07d}.png").write_bytes(buf.getvalue())


def make_folder(root: Path, n: int) -> None:
    done = root / ".complete"
    if done.exists():
        return
    if root.exists():
        shutil.rmtree(root)
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True)
    step = 20000
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_chunk, [(str(root), s, min(n, s + step)) for s in range(0, n, step)]))
    done.write_text(str(n))


def list_and_stat(root: Path) -> float:
    t = time.perf_counter()
    for c in sorted(os.listdir(root)):
        if c.startswith("."):
            continue
        with os.scandir(root / c) as it:
            for e in it:
                e.stat()
    return time.perf_counter() - t


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB of the process tree) of a command."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t
    err = p.stderr.read()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def bench(n: int, base: Path, reps: int) -> dict:
    images = base / f"images_{n}"
    t = time.perf_counter()
    make_folder(images, n)
    print(f"{n:,} files ready ({time.perf_counter() - t:.0f} s)", flush=True)
    work = base / f"work_{n}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    cfg = {"datasets": {"bench": {"source": "imagefolder", "path": str(images)}},
           "models": {"m": {"dataset": "bench", "arch": "mlp", "input_size": 8}}}
    (work / "config.yaml").write_text(json.dumps(cfg))
    smk = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--cores", "2"]
    conf = ["--configfile", "config.yaml"]  # last: --configfile takes every word after it
    cold, cold_mb = timed(smk + ["-n"] + conf, work)
    lists, warms, warm_mbs = [], [], []
    for _ in range(reps):  # interleaved
        lists.append(list_and_stat(images))
        s, mb = timed(smk + ["-n"] + conf, work)
        warms.append(s)
        warm_mbs.append(mb)
    ingest, ingest_mb = timed(smk + ["results/data/bench/manifest.csv"] + conf, work)
    info = json.loads((work / "results" / "data" / "bench" / "dataset.json").read_text())
    assert info["n_images"] == n, info["n_images"]
    row = {"files": n, "list_s": statistics.median(lists), "dry_cold_s": cold, "dry_cold_mb": cold_mb,
           "dry_warm_s": statistics.median(warms), "dry_warm_mb": max(warm_mbs), "ingest_s": ingest,
           "ingest_mb": ingest_mb, "images_per_s": n / ingest}
    row["dry_warm_over_list"] = row["dry_warm_s"] / row["list_s"]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/cvaudit-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "ingest.json")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = [bench(n, args.dir, args.reps) for n in args.sizes]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                                    "rows": rows}, indent=2) + "\n")
    print("| files | list + stat (s) | `snakemake -n`, first (s) | `snakemake -n`, later (s) | later / list "
          "| peak MB (-n) | ingest (s) | images/s | ingest peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['files']:,} | {r['list_s']:.1f} | {r['dry_cold_s']:.1f} | {r['dry_warm_s']:.1f} | "
              f"{r['dry_warm_over_list']:.1f}× | {r['dry_warm_mb']:.0f} | {r['ingest_s']:.0f} | "
              f"{r['images_per_s']:,.0f} | {r['ingest_mb']:.0f} |")


if __name__ == "__main__":
    main()
