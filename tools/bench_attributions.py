#!/usr/bin/env python
"""Speed of the perturbation methods against their compute floor, and against the libraries' defaults.

For each method on the demo model (EfficientNet-Lite0, packaged ImageNet weights, 224 px, foolbox's
photos) it measures wall time, the images the model really saw (counted by a hook), and the ratio
of wall time to the time of the same number of plain batched passes (forward, or forward + input
gradient for integrated gradients). Then the same explanations with the libraries' defaults.

    .venv/bin/python tools/bench_attributions.py [--images 4] [--threads 2] [--out results/bench/attributions.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from cvaudit.data import foolbox_dir, load_rgb  # noqa: E402
from cvaudit.explain import PixelSpace, attribute_batched, get_method  # noqa: E402
from cvaudit.models import auto_batch, build_model, normalisation  # noqa: E402
from cvaudit.trust import deletion_insertion  # noqa: E402


class Counter:
    """Counts the images passed through a model (one object owns the hook; removed on exit)."""

    def __init__(self, net):
        self.net, self.n = net, 0

    def __enter__(self):
        self.h = self.net.register_forward_pre_hook(lambda m, a: setattr(self, "n", self.n + a[0].shape[0]))
        return self

    def __exit__(self, *exc):
        self.h.remove()


def timed(fn, net, repeats: int = 2):
    """Best wall time of `repeats` runs (this machine's speed drifts by tens of percent) and the images
    the model saw in one run."""
    best, seen = float("inf"), 0
    for _ in range(repeats):
        with Counter(net) as c:
            t = time.perf_counter()
            fn()
            best, seen = min(best, time.perf_counter() - t), c.n
    return best, seen


def per_image_floor(net, x, batch: int, grad: bool, reps: int = 5) -> float:
    xb = x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
    t = torch.zeros(batch, dtype=torch.long)

    def once():
        if grad:
            xi = xb.clone().requires_grad_(True)
            out = net(xi)
            torch.autograd.grad(out.gather(1, t.view(-1, 1)).sum(), xi)
        else:
            with torch.no_grad():
                net(xb)
    once()  # warm-up
    times = []
    for _ in range(reps):
        s = time.perf_counter()
        once()
        times.append(time.perf_counter() - s)
    return float(np.min(times)) / batch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="auto", help="images per model call for cvaudit (default: auto, by pixels)")
    ap.add_argument("--out", default="results/bench/attributions.json")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    spec = {"arch": "timm:tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0", "input_size": 224,
            "num_classes": 1000, "keep_head": True}
    model = build_model(spec).eval()
    net = PixelSpace(model, *normalisation(spec, model)).eval()
    from torchvision.transforms import v2 as T
    tf = T.Compose([T.ToImage(), T.Resize((224, 224), antialias=True), T.ToDtype(torch.float32, scale=True)])
    x = torch.stack([tf(load_rgb(p)) for p in sorted(foolbox_dir().glob("imagenet_*.jpg"))[:a.images]])
    with torch.no_grad():
        target = net(x).argmax(1)
    # the compute floor: plain passes at the fastest batch size (on a CPU that is a small batch)
    batch = auto_batch(224, 224, "cpu", a.batch)
    sizes = sorted({1, 2, 4, 8, 16, 64, batch})
    fwd_by = {b: per_image_floor(net, x, b, grad=False) for b in sizes}
    bwd_by = {b: per_image_floor(net, x, b, grad=True) for b in sizes}
    fwd, bwd = min(fwd_by.values()), min(bwd_by.values())
    print("forward img/s by batch size:", {b: round(1 / t, 1) for b, t in fwd_by.items()})
    print("forward+input-gradient img/s by batch size:", {b: round(1 / t, 1) for b, t in bwd_by.items()})

    settings = {"occlusion": {"window": 56, "stride": 28}, "integrated_gradients": {"steps": 16},
                "lime": {"samples": 128, "segments": 40}, "shap": {"evals": 128}}
    rows = []

    def record(name, impl, fn, grad=False):
        wall, passes = timed(fn, net)
        floor = passes * (bwd if grad else fwd)
        same = passes * (bwd_by if grad else fwd_by).get(batch, fwd)
        rows.append({"method": name, "implementation": impl, "images": len(x), "wall_s": round(wall, 2),
                     "images_per_s": round(len(x) / wall, 3), "passes_per_image": passes / len(x),
                     "floor_s": round(floor, 2), "ratio_to_floor": round(wall / floor, 2) if floor else None,
                     "ratio_to_same_batch": round(wall / same, 2) if same else None})
        print(f"{name:22s} {impl:40s} {wall:7.2f}s  {passes / len(x):6.0f} passes/img  ratio {wall / floor:5.2f}")

    for name, opts in settings.items():
        m = get_method(name, batch_size=batch, **opts)
        record(name, f"cvaudit (batch {batch})", lambda m=m: attribute_batched(m, net, x, target),
               grad=name == "integrated_gradients")
    maps = get_method("saliency").attribute(net, x, target)
    record("deletion/insertion", f"cvaudit (8 steps, batch {batch})",
           lambda: deletion_insertion(net, x, target, maps, steps=8, batch_size=batch))

    # the same explanations with the libraries' defaults
    from captum.attr import IntegratedGradients, Occlusion
    occ = Occlusion(lambda inp: torch.softmax(net(inp), 1))
    record("occlusion", "captum Occlusion, perturbations_per_eval=1",
           lambda: occ.attribute(x, sliding_window_shapes=(3, 56, 56), strides=(3, 28, 28), baselines=0.5,
                                 target=target))
    record("integrated_gradients", "captum IG, internal_batch_size=None",
           lambda: IntegratedGradients(net).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=16),
           grad=True)
    record("integrated_gradients", "captum IG, internal_batch_size=1 image",
           lambda: [IntegratedGradients(net).attribute(x[i:i + 1], baselines=torch.zeros_like(x[i:i + 1]),
                                                       target=target[i:i + 1], n_steps=16, internal_batch_size=1)
                    for i in range(len(x))], grad=True)

    from lime import lime_image
    from cvaudit.explain import superpixels, target_probability_fn

    def lime_default():
        for img, t in zip(x.permute(0, 2, 3, 1).double().numpy(), target.tolist()):
            lime_image.LimeImageExplainer(random_state=0).explain_instance(
                img, target_probability_fn(net, t), labels=(0,), top_labels=None, num_samples=128,
                segmentation_fn=lambda im: superpixels(im, 40))  # batch_size left at its default (10)
    record("lime", "lime_image defaults (batch_size=10)", lime_default)

    import shap

    def shap_default():
        imgs = x.permute(0, 2, 3, 1).numpy().astype(np.float64)
        masker = shap.maskers.Image(np.zeros(imgs.shape[1:]), imgs.shape[1:])
        for img, t in zip(imgs, target.tolist()):
            shap.Explainer(target_probability_fn(net, t), masker, algorithm="partition")(img[None], max_evals=128, silent=True)
    record("shap", "shap Partition, batch_size='auto'", shap_default)

    ours = {r["method"]: r["wall_s"] for r in rows if r["implementation"].startswith("cvaudit")}
    for r in rows:
        if not r["implementation"].startswith("cvaudit"):
            r["our_speedup"] = round(r["wall_s"] / ours[r["method"]], 2)
    out = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "model": "EfficientNet-Lite0 (packaged ImageNet weights), 224 px, foolbox ImageNet photos",
           "floor_images_per_s": {"forward": {b: round(1 / t, 1) for b, t in fwd_by.items()},
                                  "forward_input_gradient": {b: round(1 / t, 1) for b, t in bwd_by.items()}},
           "batch_size": batch,
           "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print("\n| method | implementation | img/s | passes/img | wall / floor (fastest batch) | wall / same-batch passes "
          "| our speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['implementation']} | {r['images_per_s']:.2f} | {r['passes_per_image']:.0f} | "
              f"{r['ratio_to_floor']:.2f} | {r['ratio_to_same_batch']:.2f} | {r.get('our_speedup', '')} |")


if __name__ == "__main__":
    main()
