#!/usr/bin/env python
"""Time and peak memory of the per-image stages (attribution methods with their trust checks,
invariance, adversarial) at growing audit-set sizes, each stage and size in a fresh process.

Real Fashion-MNIST test images (Debian dataset-fashion-mnist) are ingested once into a scratch
folder. At 28 px the model is the demo's cnn_fmnist (results/cnn_fmnist/model.safetensors: run `make
demo` first); at 224 px (--px 224) the images are resized to 224 x 224 as a model of that input size
sees them, and the model is a small CNN of that input size (simple_cnn, channels 4/8/8, seeded
random weights: time and memory do not depend on what the weights are, and no 224 px model trains in
minutes here). The stages run with the demo's settings (config/config.yaml) unless --light, on the
CPU, one thread per stage as in the workflow. Time should grow linearly with the images; memory should
stay flat apart from the results the stage keeps (maps, curves, the sample's images).

    .venv/bin/python tools/bench_scale.py [--px 224] [--sizes 100 300 1000] [--stages ...]
        [--out results/bench/scale.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
MODEL = ROOT / "results" / "cnn_fmnist" / "model.safetensors"
STAGES = ["explain random", "explain saliency", "explain deconvnet", "explain guided_backprop", "explain cam",
          "explain gradcam", "explain guided_gradcam", "explain occlusion", "explain integrated_gradients",
          "explain lime", "explain shap", "invariance rotate", "invariance noise", "adversarial fgsm",
          "adversarial pgd", "adversarial autoattack"]


def model_224(path: Path) -> Path:
    """A small CNN at 224 px (seeded random weights), saved as the workflow saves models."""
    import torch

    from cvaudit.net.models import build_model, save_model
    if not path.exists():
        torch.manual_seed(0)
        spec = {"arch": "simple_cnn", "arch_options": {"channels": [4, 8, 8]}, "weights": "none",
                "num_classes": 10, "input_size": 224, "class_names": demo_config()["datasets"]["fmnist"]["class_names"],
                "mean": [0.5] * 3, "std": [0.5] * 3}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(build_model(spec).eval(), spec, path)
    return path


def rss_mb() -> float:
    """This process's peak resident memory (MB). Linux's VmHWM: getrusage's ru_maxrss survives exec, so
    in a child it starts at the parent's size at fork and would hide the child's own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def demo_config() -> dict:
    import yaml

    from cvaudit.config import validate_config
    return validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                           ROOT / "config" / "schema.yaml")


def audit_set(model: Path, manifest: str, n: int, out: Path) -> None:
    """An audit set of the first n test images (evaluate_model's format), with the model's predictions."""
    import numpy as np
    import torch

    from cvaudit.core.images import load_rgb
    from cvaudit.core.manifest import read_manifest
    from cvaudit.net.models import load_model
    from cvaudit.net.pixel_space import PixelSpace, predict
    from cvaudit.net.transforms import display_transform
    model, spec = load_model(model)
    rows = read_manifest(manifest, "test")[:n]
    show = display_transform(spec)
    images = np.stack([show(load_rgb(r["path"])).permute(1, 2, 0).numpy() for r in rows]).astype(np.uint8)
    net = PixelSpace(model, spec["mean"], spec["std"]).eval()
    chunks = [predict(net, torch.from_numpy(images[i:i + 256]).permute(0, 3, 1, 2).float().div(255), 64)
              for i in range(0, len(images), 256)]  # only a chunk of the images as floats at a time
    preds, conf = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
    index = {c: i for i, c in enumerate(spec["class_names"])}
    targets = np.array([index[r["label"]] for r in rows])
    np.savez_compressed(out, images=images, targets=targets, preds=preds.numpy(), confidence=conf.numpy(),
                        p_true=conf.numpy(), paths=np.array([r["path"] for r in rows]),
                        class_names=np.array(spec["class_names"]))


LIGHT = {"lime": {"samples": 32, "segments": 40, "check_samples": 16}, "shap": {"evals": 32}, "integrated_gradients": {"steps": 8,
         "max_steps": 16}, "autoattack": {"steps": 5, "target_classes": 1, "square_queries": 20}}


def child(stage: str, model: str, manifest: str, audit: str, n: int, scratch: str, light: bool) -> dict:
    import torch
    torch.set_num_threads(1)
    cfg = demo_config()
    if light:  # smaller budgets for the methods that make hundreds of passes an image
        for k in ("lime", "shap", "integrated_gradients"):
            cfg["explain"][k].update(LIGHT[k])
        cfg["robustness"]["adversarial"]["autoattack"].update(LIGHT["autoattack"])
    kind, name = stage.split()
    out = Path(scratch) / f"{kind}.{name}.{n}"
    base = rss_mb()
    t0 = time.perf_counter()
    from cvaudit.core.registry import attack_options
    from cvaudit.core.shards import run_stage
    job = {"model": model, "data": audit if kind == "explain" else manifest, "seed": 0, "device": "cpu", "threads": 1}
    if kind == "explain":
        job.update(options=cfg["explain"].get(name, {}), trust=cfg["explain"]["trust"])
    elif kind == "invariance":
        job.update(options={"max_images": n, "severities": cfg["robustness"]["invariance"][name]},
                   drift=cfg["robustness"]["drift"])
    else:
        job.update(options={**attack_options(cfg["robustness"]["adversarial"], name), "max_images": n})
    run_stage(kind, name, job, f"{out}.{'json' if kind == 'invariance' else 'npz'}")
    seconds = time.perf_counter() - t0
    stored = max(Path(scratch).glob(f"{kind}.{name}.{n}.*"), key=os.path.getmtime).stat().st_size
    return {"stage": stage, "n": n, "seconds": round(seconds, 2), "rss_before_mb": round(base),
            "peak_rss_mb": round(rss_mb()), "output_mb": round(stored / 2**20, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 800])
    ap.add_argument("--px", type=int, choices=[28, 224], default=28, help="28: the demo's cnn_fmnist; 224: a small "
                    "CNN of that input size on the same images resized")
    ap.add_argument("--light", action="store_true", help="smaller LIME, SHAP, integrated-gradients and AutoAttack "
                    "budgets (" + json.dumps(LIGHT) + "): the same code paths and batches, fewer passes an image")
    ap.add_argument("--stages", nargs="+", default=STAGES)
    ap.add_argument("--scratch", default="/tmp/cvaudit-bench-scale")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "scale.json"))
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="print the table of a previous --out file, run nothing")
    a = ap.parse_args()
    if a.child:
        stage, model, manifest, audit, n, scratch, light = a.child
        print(json.dumps(child(stage, model, manifest, audit, int(n), scratch, light == "1")))
        return
    if a.table:
        report = json.loads(Path(a.out).read_text())
        return table(report["rows"], a.sizes, a.stages)
    model = model_224(Path(a.scratch) / "cnn224.safetensors") if a.px == 224 else MODEL
    if not model.exists():
        sys.exit(f"bench_scale: {MODEL} is missing; run `make demo` first (it trains cnn_fmnist)")
    from cvaudit.data.ingest_dataset import ingest
    manifest = Path(a.scratch) / "data" / "manifest.csv"
    if not manifest.exists():
        per_class = -(-max(a.sizes) // 10)
        print(f"ingesting {per_class * 10} Fashion-MNIST images into {a.scratch} ...", flush=True)
        ingest({"source": "idx", "path": "/usr/share/datasets/fashion-mnist", "max_per_class": per_class,
                "class_names": demo_config()["datasets"]["fmnist"]["class_names"],
                "split": {"val": 0.0, "test": 1.0}}, "bench", 0, manifest.parent)
    rows = []
    with tempfile.TemporaryDirectory(dir=a.scratch) as tmp:
        for n in a.sizes:
            audit = Path(tmp) / f"audit{n}.npz"
            audit_set(model, str(manifest), n, audit)
            for stage in a.stages:
                cmd = [sys.executable, __file__, "--child", stage, str(model), str(manifest), str(audit), str(n), tmp,
                       "1" if a.light else "0"]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode:
                    sys.exit(f"bench_scale: {stage} at {n} images failed:\n{p.stderr[-3000:]}")
                res = json.loads(p.stdout.strip().splitlines()[-1])
                print(res, flush=True)
                rows.append(res)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only, "
                         "one thread per stage", "px": a.px, "light": a.light,
              "model": "cnn_fmnist (demo)" if a.px == 28 else "simple_cnn 4/8/8 at 224 px (seeded random weights)",
              "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    table(rows, a.sizes, a.stages)


def table(rows: list[dict], sizes: list[int], stages: list[str]) -> None:
    # marginal cost: seconds per 100 more images between consecutive sizes (the fixed start-up cancels out)
    steps = list(zip(sizes, sizes[1:]))
    print("\n| stage | " + " | ".join(f"{n} images (s)" for n in sizes) + " | "
          + " | ".join(f"s per 100 more images, {m} to {n}" for m, n in steps) + " | peak RSS MB ("
          + " / ".join(map(str, sizes)) + ") | output MB (" + " / ".join(map(str, sizes)) + ") |")
    print("|---|" + "---|" * (len(sizes) + len(steps) + 2))
    for stage in stages:
        r = {x["n"]: x for x in rows if x["stage"] == stage}
        print(f"| {stage} | " + " | ".join(str(r[n]["seconds"]) for n in sizes) + " | "
              + " | ".join(f"{100 * (r[n]['seconds'] - r[m]['seconds']) / (n - m):.2f}" for m, n in steps)
              + " | " + " / ".join(str(r[n]["peak_rss_mb"]) for n in sizes)
              + " | " + " / ".join(str(r[n]["output_mb"]) for n in sizes) + " |")


if __name__ == "__main__":
    main()
