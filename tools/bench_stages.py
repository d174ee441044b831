#!/usr/bin/env python
"""Images per second of every per-image stage of a finished run, beside the device's plain rate.

Reads a run's results (the stages record their images and seconds) and benchmarks/ (each job's wall
time, from Snakemake), then measures each model's plain forward and forward + input-gradient rate on
the device at the batch size the stages use (median of 5 timed calls after a warm-up). A stage's rate
over the plain rate says how far it is from the model-bound floor (a method that makes k passes per
image cannot beat 1/k of it).

On a GPU machine, the whole measurement is one command (it runs the demo on the GPU first):

    tools/bench_gpu.sh

Here, after `make demo`:

    .venv/bin/python tools/bench_stages.py [--results results] [--benchmarks benchmarks] [--device cpu]
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def job_wall(benchmarks: Path, rule: str, wildcards: str) -> float | None:
    p = benchmarks / rule / f"{wildcards}.tsv"
    if not p.exists():
        return None
    with open(p) as f:
        return float(list(csv.DictReader(f, delimiter="\t"))[-1]["s"])


def stage_rows(results: Path, benchmarks: Path) -> list[dict]:
    from cvaudit.core.files import load_npz, read_json
    rows = []
    for model_dir in sorted(p for p in results.iterdir() if (p / "model.safetensors").exists()):
        model = model_dir.name
        for f in sorted((model_dir / "explain").glob("*/maps.npz")):
            meta = load_npz(f)["meta"]
            rows.append({"model": model, "stage": f"explain {f.parent.name}", "images": meta["n_images"],
                         "seconds": meta["seconds"], "attribution_seconds": meta.get("attribution_seconds"),
                         "job_wall_s": job_wall(benchmarks, "explain", f"{model}.{f.parent.name}")})
        for f in sorted((model_dir / "robust" / "invariance").glob("*.json")):
            r = read_json(f)
            rows.append({"model": model, "stage": f"invariance {f.stem}", "images": r["n"], "seconds": r["seconds"],
                         "job_wall_s": job_wall(benchmarks, "invariance", f"{model}.{f.stem}")})
        for f in sorted((model_dir / "robust" / "adversarial").glob("*.npz")):
            meta = load_npz(f)["meta"]
            rows.append({"model": model, "stage": f"adversarial {f.stem}", "images": meta["n"],
                         "seconds": meta["seconds"], "job_wall_s": job_wall(benchmarks, "adversarial", f"{model}.{f.stem}")})
    for r in rows:
        r["images_per_s"] = round(r["images"] / r["seconds"], 2) if r["seconds"] else None
    return rows


def plain_rates(results: Path, device: str) -> dict:
    """Each model's plain forward and forward + input-gradient images/s at the stages' batch size."""
    import torch

    from cvaudit.net.models import auto_batch
    from cvaudit.net.pixel_space import pixel_model
    out = {}
    for model_dir in sorted(p for p in results.iterdir() if (p / "model.safetensors").exists()):
        _, spec, net, dev = pixel_model(model_dir / "model.safetensors", 0, device, torch.get_num_threads())
        s = spec["input_size"]
        b = auto_batch(s, s, dev)
        x = torch.rand(b, 3, s, s, device=dev)

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def forward():
            with torch.no_grad():
                net(x)

        def backward():
            xi = x.clone().requires_grad_(True)
            torch.autograd.grad(net(xi)[:, 0].sum(), xi)
        rates = {}
        for name, fn in (("forward", forward), ("forward_input_gradient", backward)):
            fn(), sync()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t)
            rates[name] = round(b / statistics.median(times), 1)
        out[model_dir.name] = {"input_size": s, "batch": b, **rates}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--benchmarks", default=str(ROOT / "benchmarks"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the plain rate (the jobs' own count)")
    ap.add_argument("--demo-seconds", type=float, help="the demo's wall time, to put in the report")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "stages.json"))
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    results, benchmarks = Path(a.results), Path(a.benchmarks)
    rows, plain = stage_rows(results, benchmarks), plain_rates(results, a.device)
    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"CPU, {a.threads} thread(s)"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"device": device, "demo_seconds": a.demo_seconds, "plain": plain,
                                       "stages": rows}, indent=2))
    print(f"{device}" + (f"; the demo took {a.demo_seconds:.0f} s" if a.demo_seconds else ""))
    print("\n| model | px | batch | plain forward img/s | plain forward + input gradient img/s |")
    print("|---|---|---|---|---|")
    for m, p in plain.items():
        print(f"| {m} | {p['input_size']} | {p['batch']} | {p['forward']} | {p['forward_input_gradient']} |")
    print("\n| model | stage | images | stage s | job wall s | img/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['stage']} | {r['images']} | {r['seconds']} | {r['job_wall_s'] or ''} | "
              f"{r['images_per_s'] or ''} |")


if __name__ == "__main__":
    main()
