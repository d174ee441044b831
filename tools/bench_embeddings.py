#!/usr/bin/env python
"""Time and peak memory of the represent stage (streamed embedding pass + PCA, t-SNE, k-NN,
silhouette) at growing test-set sizes, each size in a fresh process.

Real Fashion-MNIST images (Debian dataset-fashion-mnist) are ingested once into a scratch folder
(as PNG files, like any dataset); the model is the demo's lite0_fmnist (EfficientNet-Lite0 at 64 px)
when results/lite0_fmnist/model.safetensors exists, else the same architecture with the packaged
ImageNet weights and a fresh head. Peak memory is the process's maximum resident set size; the
"after load" column is the same before the stage starts (Python, torch and the model).

    .venv/bin/python tools/bench_embeddings.py [--sizes 1000 5000 10000] [--full-tsne] [--out results/bench/embeddings.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(manifest: str, n: int, full_tsne: bool) -> dict:
    import numpy as np
    import torch

    from cvaudit.core.manifest import read_manifest
    from cvaudit.net.models import build_model, load_model, normalisation
    from cvaudit.represent.represent import embedding_space, pick_layers, stream_features

    torch.set_num_threads(2)
    trained = ROOT / "results" / "lite0_fmnist" / "model.safetensors"
    if trained.exists():
        model, spec = load_model(trained)
    else:
        spec = {"arch": "timm:tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0", "input_size": 64,
                "num_classes": 10}
        model = build_model(spec).eval()
        spec["mean"], spec["std"] = normalisation(spec, model)
    rows = read_manifest(manifest, "test")
    rows = [rows[i] for i in sorted(np.random.default_rng(0).permutation(len(rows))[:n])]  # all classes
    names = sorted({r["label"] for r in rows})
    spec.setdefault("class_names", names)
    labels = np.array([names.index(r["label"]) for r in rows])
    base = rss_mb()
    t0 = time.perf_counter()
    f = stream_features(model, rows, spec, "cpu", pick_layers(model, 6), cka_images=256)
    t1 = time.perf_counter()
    peak_embed = rss_mb()
    space = embedding_space(f["embeddings"], labels, seed=0)
    t2 = time.perf_counter()
    out = {"n": len(rows), "dim": int(f["embeddings"].shape[1]), "embed_s": round(t1 - t0, 1),
           "space_s": round(t2 - t1, 1), "tsne_points": int(len(space["tsne_index"])),
           "knn_accuracy": round(space["knn_accuracy"], 3), "rss_after_load_mb": round(base), "peak_rss_embed_mb": round(peak_embed),
           "peak_rss_mb": round(rss_mb()), "embedding_matrix_mb": round(f["embeddings"].nbytes / 2**20, 1)}
    if full_tsne:
        t3 = time.perf_counter()
        embedding_space(f["embeddings"], labels, seed=0, tsne_max=len(rows))
        out["space_all_points_s"] = round(time.perf_counter() - t3, 1)
        out["peak_rss_all_points_mb"] = round(rss_mb())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--full-tsne", action="store_true", help="also t-SNE over every point (the stage caps it at 2000)")
    ap.add_argument("--scratch", default="/tmp/cvaudit-bench-fmnist")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "embeddings.json"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.full_tsne)))
        return
    from cvaudit.data.ingest_dataset import ingest
    manifest = Path(a.scratch) / "manifest.csv"
    if not manifest.exists():
        per_class = -(-max(a.sizes) // 10)
        print(f"ingesting {per_class * 10} Fashion-MNIST test images into {a.scratch} ...", flush=True)
        ingest({"source": "idx", "path": "/usr/share/datasets/fashion-mnist", "max_per_class": per_class,
                "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                "Bag", "Ankle boot"],
                "split": {"val": 0.0, "test": 1.0}}, "bench", 0, a.scratch)
    rows = []
    for n in a.sizes:
        cmd = [sys.executable, __file__, "--child", str(manifest), str(n)] + (["--full-tsne"] if a.full_tsne else [])
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(res, flush=True)
        rows.append(res)
    report = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
                         "CPU only", "python": platform.python_version(), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print("\n| test images | embedding pass (s) | PCA + t-SNE + k-NN + silhouette (s) | t-SNE points | "
          "RSS after load (MB) | peak after the pass (MB) | peak after the analysis (MB) | embedding matrix (MB) |"
          + (" t-SNE on all points (s) |" if a.full_tsne else "")
          + "\n|---|---|---|---|---|---|---|---|" + ("---|" if a.full_tsne else ""))
    for r in rows:
        print(f"| {r['n']} | {r['embed_s']} | {r['space_s']} | {r['tsne_points']} | {r['rss_after_load_mb']} | "
              f"{r['peak_rss_embed_mb']} | {r['peak_rss_mb']} | {r['embedding_matrix_mb']} |"
              + (f" {r['space_all_points_s']} |" if a.full_tsne else ""))


if __name__ == "__main__":
    main()
