"""The side_by_side stage: every model of one dataset explains the same test images, for its own
prediction, with the methods of config key report.compare.methods. The comparison report shows what
this stage wrote (it computes nothing itself)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cvaudit import CvauditError
from cvaudit.core.files import load_npz, save_npz

log = logging.getLogger("cvaudit.report.side_by_side")


def shared_test_images(manifest, n: int, seed: int) -> list[dict]:
    """n test rows of a dataset, one class at a time in a seeded order: the same images for every model."""
    from cvaudit.core.manifest import read_manifest
    rows = read_manifest(manifest, "test")
    if not rows:
        raise CvauditError(f"{manifest}: the dataset has no test images to compare models on")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[dict]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(r)
    queues = [list(rng.permutation(len(v))) for v in by_class.values()]
    groups = list(by_class.values())
    order = rng.permutation(len(groups))
    picked: list[dict] = []
    while len(picked) < min(n, len(rows)):
        for g in order:
            if queues[g] and len(picked) < n:
                picked.append(groups[g][queues[g].pop(0)])
    return picked


def explain_side_by_side(models: dict, manifest, methods: list[str], options: dict, n: int, seed: int,
                         device: str, threads: int) -> dict:
    """Each model of one dataset explains the same test images, for its own prediction, with each method.

    models: {name: model.safetensors}. Returns {"files", "true", "models": {name: {"images", "preds",
    "confidence", "class_names", "maps": {method: (N, H, W) or None}, "reasons": {method: str}}}}."""
    import torch

    from cvaudit.core.images import load_rgb
    from cvaudit.explain.methods import NotApplicable, attribute_batched, get_method
    from cvaudit.net.models import auto_batch
    from cvaudit.net.pixel_space import pixel_model, predict
    from cvaudit.net.transforms import display_transform

    rows = shared_test_images(manifest, n, seed)
    out = {"files": [Path(r["path"]).name for r in rows], "true": [r["label"] for r in rows], "models": {}}
    for name, path in models.items():
        model, spec, net, dev = pixel_model(path, seed, device, threads)
        show = display_transform(spec)
        images = np.stack([show(load_rgb(r["path"])).permute(1, 2, 0).numpy() for r in rows]).astype(np.uint8)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(dev)
        batch = auto_batch(x.shape[-2], x.shape[-1], dev)
        preds, conf = predict(net, x, batch)
        res = {"images": images, "preds": preds.numpy(), "confidence": conf.numpy(),
               "class_names": list(spec["class_names"]), "maps": {}, "reasons": {}}
        for method in methods:
            m = get_method(method, batch_size=batch, **({"seed": seed} | options.get(method, {})))
            try:
                res["maps"][method] = attribute_batched(m, net, x, preds.to(dev))
            except NotApplicable as e:
                res["maps"][method], res["reasons"][method] = None, str(e)
        out["models"][name] = res
        log.info("%s: explained %d shared images with %s", name, len(rows), ", ".join(methods))
    return out


def run_side_by_side(models: dict, manifest, methods: list[str], options: dict, n: int, seed: int, device: str,
                     threads: int, out) -> dict:
    """models: {name: model.safetensors} of one dataset. Writes the images, predictions and maps per model
    (arrays named by the model's position) and, in the meta, what load_side_by_side rebuilds."""
    shared = explain_side_by_side(models, manifest, methods, options, n, seed, device, threads)
    from cvaudit.explain.methods import get_method
    meta = {"files": shared["files"], "true": shared["true"], "methods": list(methods),
            "labels": {m: get_method(m).label for m in methods}, "models": []}
    arrays = {}
    for k, (name, r) in enumerate(shared["models"].items()):
        meta["models"].append({"name": name, "class_names": r["class_names"], "reasons": r["reasons"],
                               "maps": [m for m, v in r["maps"].items() if v is not None]})
        arrays.update({f"m{k}_images": r["images"], f"m{k}_preds": r["preds"], f"m{k}_confidence": r["confidence"]})
        arrays.update({f"m{k}_map_{i}": v for i, (m, v) in enumerate(r["maps"].items()) if v is not None})
    save_npz(out, meta, **arrays)
    return meta


def load_side_by_side(path) -> dict:
    """What explain_side_by_side returned, read back from the stage's file."""
    z = load_npz(path)
    meta = z["meta"]
    out = {"files": meta["files"], "true": meta["true"], "labels": meta["labels"], "models": {}}
    for k, m in enumerate(meta["models"]):
        maps = {method: (z[f"m{k}_map_{i}"] if method in m["maps"] else None) for i, method in enumerate(meta["methods"])}
        out["models"][m["name"]] = {"images": z[f"m{k}_images"], "preds": z[f"m{k}_preds"],
                                    "confidence": z[f"m{k}_confidence"], "class_names": m["class_names"],
                                    "maps": maps, "reasons": m["reasons"]}
    return out
