#!/usr/bin/env python
"""Cost of each adversarial attack per image on this machine, beside a plain forward + backward pass.

Each attack runs on the same images at one epsilon, on every image (not as the cascade, where later
attacks only see the survivors: these are upper bounds per image). The attacks and the floor are
interleaved (floor, fgsm, pgd, ..., floor, fgsm, ...) for `--repeats` rounds and the median is
reported, so a drift in the machine's speed hits all of them alike.

    .venv/bin/python tools/bench_attacks.py [--images 8] [--repeats 3] [--threads 2] [--out results/bench/attacks.json]

Budgets are the demo's (config/config.yaml) unless --default-budgets (config/schema.yaml's).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from cvaudit.core.images import load_rgb  # noqa: E402
from cvaudit.data.sources import foolbox_dir  # noqa: E402
from cvaudit.net.models import build_model, normalisation  # noqa: E402
from cvaudit.net.pixel_space import PixelSpace  # noqa: E402


def models(size: int):
    """(name, net, images, targets): EfficientNet-Lite0 (packaged ImageNet weights) at the demo's sizes,
    and the demo's small CNN, on foolbox's photos with the lite0's own predictions as targets."""
    from torchvision.transforms.v2 import functional as TF
    photos = sorted(foolbox_dir().glob("imagenet_*.jpg"))
    out = []
    for name, spec in (("lite0", {"arch": "timm:tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0",
                                  "num_classes": 1000}),
                       ("simple_cnn", {"arch": "simple_cnn", "arch_options": {"channels": [32, 64, 128]},
                                       "weights": "none", "num_classes": 10})):
        for s in ((64, 224) if name == "lite0" else (28,)):
            spec = {**spec, "input_size": s, "class_names": [str(i) for i in range(spec["num_classes"])]}
            model = build_model(spec).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            mean, std = normalisation(spec, model)
            net = PixelSpace(model, mean, std).eval()
            x = torch.stack([TF.resize(TF.to_dtype(TF.to_image(load_rgb(p)), torch.float32, scale=True), [s, s],
                                       antialias=True) for p in photos[:size]]).clamp(0, 1)
            with torch.no_grad():
                y = net(x).argmax(1)
            out.append((f"{name} {s} px", net, x, y))
    return out


def floor(net, x, y):
    x = x.clone().requires_grad_(True)
    torch.autograd.grad(torch.nn.functional.cross_entropy(net(x), y), x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eps", type=float, default=0.0078)
    ap.add_argument("--default-budgets", action="store_true")
    ap.add_argument("--out", default="results/bench/attacks.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks
    import yaml

    from cvaudit.config import validate_config
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    if args.default_budgets:
        cfg["robustness"]["adversarial"] = {}
    o = validate_config(cfg)["robustness"]["adversarial"]
    eps, pg, aa = args.eps, o["pgd"], o["autoattack"]
    rows = []
    for name, net, x, y in models(args.images):
        attacks = {
            "forward + backward (floor)": lambda: floor(net, x, y),
            "FGSM": lambda: torchattacks.FGSM(net, eps=eps)(x, y),
            f"PGD {pg['steps']} steps x {pg['restarts']}": lambda: [
                torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / pg["steps"], steps=pg["steps"])(x, y)
                for _ in range(pg["restarts"])],
            f"APGD-CE {aa['steps']} steps": lambda: torchattacks.APGD(net, eps=eps, steps=aa["steps"])(x, y),
            f"APGD-T {aa['steps']} steps x {aa['target_classes']} targets": lambda: torchattacks.APGDT(
                net, eps=eps, steps=aa["steps"], n_classes=aa["target_classes"] + 1)(x, y),
            f"Square {aa['square_queries']} queries": lambda: torchattacks.Square(
                net, eps=eps, n_queries=aa["square_queries"])(x, y),
        }
        times = {k: [] for k in attacks}
        for _ in range(args.repeats):  # interleaved: A B C ... A B C ...
            for k, fn in attacks.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        base = statistics.median(times["forward + backward (floor)"])
        for k, ts in times.items():
            med = statistics.median(ts)
            rows.append({"model": name, "attack": k, "seconds_per_image": med / len(x), "floor_passes": med / base,
                         "runs": [round(t, 4) for t in ts]})
            print(f"{name:16s} {k:36s} {1000 * med / len(x):9.1f} ms/image  {med / base:8.1f} x floor", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                               "images": args.images, "repeats": args.repeats, "eps": eps, "budgets": o,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
