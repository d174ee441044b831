"""Clever-Hans detection: SpRAy over many test images per predicted class (cvaudit.spray), then the
counterfactual test of every flagged cluster.

A flagged cluster's region (the bounding box of its cells) is taken from the member that puts the most
relevance there and pasted into test images of other classes: the share now predicted as the class is the
*paste* flip rate. The region is also removed (biharmonic inpainting, scikit-image) from the members: the
share no longer predicted as the class is the *remove* flip rate. A region of the same size at a random
place, pasted from and removed from the same images, is the control. Both rates carry Wilson intervals;
a paste flip rate well above the control's turns the suspicion into the verdict `shortcut_suspected`.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from . import stats
from .io import save_npz
from .methods.base import NotApplicable, attribute_batched, get_method
from .models import auto_batch
from .pixels import pixel_model, predict
from .sample import robustness_images
from .spray import box_of, describe, foreground_frequency, pool_maps, spray

log = logging.getLogger("cvaudit.clever_hans")

REFERENCE = ("Lapuschkin et al. 2019, Unmasking Clever Hans predictors and assessing what machines really learn "
             "(Nature Communications 10:1096)")


def paste(x: torch.Tensor, source: torch.Tensor, box) -> torch.Tensor:
    """Copies of x with the box's pixels taken from `source` (one image)."""
    y0, y1, x0, x1 = box
    out = x.clone()
    out[..., y0:y1, x0:x1] = source[..., y0:y1, x0:x1]
    return out


def remove(x: torch.Tensor, box) -> torch.Tensor:
    """Copies of x with the box inpainted from its surroundings (scikit-image's biharmonic inpainting)."""
    from skimage.restoration import inpaint_biharmonic

    y0, y1, x0, x1 = box
    imgs = x.permute(0, 2, 3, 1).cpu().double().numpy()
    mask = np.zeros(imgs.shape[1:3], bool)
    mask[y0:y1, x0:x1] = True
    out = np.stack([inpaint_biharmonic(im, mask, channel_axis=-1) for im in imgs]).clip(0, 1)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype)


def random_box(box, height: int, width: int, rng: np.random.Generator):
    """A box of the same size at a random place that does not overlap `box` (anywhere, if it cannot)."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    places = [(a, b) for a in range(height - h + 1) for b in range(width - w + 1)
              if a >= y1 or a + h <= y0 or b >= x1 or b + w <= x0]
    if not places:
        places = [(a, b) for a in range(height - h + 1) for b in range(width - w + 1)]
    a, b = places[int(rng.integers(len(places)))]
    return int(a), int(a + h), int(b), int(b + w)


def flip_rates(net, x: torch.Tensor, cls: int, source: int, members: np.ndarray, others: np.ndarray, box,
               batch: int) -> tuple[dict, dict, dict]:
    """Paste (others that turn into `cls`) and remove (members that stop being `cls`) flip rates, with the
    changed images' predictions for the report's examples."""
    pasted = paste(x[others], x[source], box) if len(others) else x[:0]
    p_paste, _ = predict(net, pasted, batch)
    removed = remove(x[members], box) if len(members) else x[:0]
    p_remove, _ = predict(net, removed, batch)
    return (stats.proportion(int((p_paste == cls).sum()), len(others)),
            stats.proportion(int((p_remove != cls).sum()), len(members)),
            {"paste": p_paste.numpy(), "remove": p_remove.numpy(), "pasted": pasted, "removed": removed})


def maps_for(net, x: torch.Tensor, pred: torch.Tensor, options: dict, batch: int, seed: int):
    """The maps of the predicted class by the first of the configured methods that applies, and why the ones
    before it did not."""
    why = []
    for name in options["methods"]:
        m = get_method(name, batch_size=batch, seed=seed)
        try:
            return name, attribute_batched(m, net, x, pred), "; ".join(why)
        except NotApplicable as e:
            why.append(f"{name} does not apply: {e}")
    raise NotApplicable("; ".join(why))


def analyse(net, x8: torch.Tensor, y: torch.Tensor, class_names: list[str], options: dict, seed: int, dev) -> tuple[dict, dict]:
    x = x8.to(dev).float().div(255)
    batch = auto_batch(x.shape[-2], x.shape[-1], dev)
    pred, _ = predict(net, x, batch)
    method, maps, why = maps_for(net, x, pred.to(dev), options, batch, seed)
    grid = options["grid"]
    pooled = pool_maps(maps, grid)
    obj = foreground_frequency(x8.numpy(), grid)
    rng = np.random.default_rng(seed)
    H, W = x.shape[-2:]
    pn, yn = pred.numpy(), y.numpy()
    result = {"n": int(len(x)), "method": method, "method_note": why, "grid": grid, "classes": [],
              "object_frequency": obj.tolist(), "reference": REFERENCE}
    arrays = {"cluster_maps": [], "cluster_class": [], "cluster_thumbs": [], "evidence": []}
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(pn == c)
        if not len(idx):  # a class no test image is predicted as (most of ImageNet's 1000 on a small set)
            continue
        entry = {"class": name, "index": c, "n": int(len(idx)), "clusters": []}
        result["classes"].append(entry)
        if len(idx) < options["min_class_images"]:
            entry["note"] = f"{len(idx)} images predicted as this class: too few to cluster (at least {options['min_class_images']})"
            continue
        s = spray(pooled[idx], options["neighbors"], options["max_clusters"], seed)
        entry.update(k=s["k"], eigenvalues=s["eigenvalues"])
        others_all = np.flatnonzero((pn != c) & (yn != c))
        for cl in describe(pooled[idx], s["labels"], obj, options):
            members = idx[cl.pop("members")]
            region = cl.pop("region")
            arrays["cluster_maps"].append(cl.pop("mean_map"))
            arrays["cluster_class"].append(c)
            order = np.argsort(-pooled[members][:, region].sum(1), kind="stable")
            thumbs = np.zeros((options["examples"], H, W, 3), np.uint8)
            pick = members[order[:options["examples"]]]
            thumbs[:len(pick)] = x8[torch.as_tensor(pick)].permute(0, 2, 3, 1).numpy()
            arrays["cluster_thumbs"].append(thumbs)
            cl.update(region=region.astype(int).tolist(), n_thumbs=int(len(pick)), row=len(arrays["cluster_maps"]) - 1)
            if cl["flagged"]:
                others = rng.permutation(others_all)[:options["paste_images"]]
                cl["evidence_row"] = len(arrays["evidence"])
                arrays["evidence"].append(counterfactual(net, x, x8, c, cl, region, members, int(members[order[0]]),
                                                         others, rng, batch, options["examples"]))
            entry["clusters"].append(cl)
    flagged = [{"class": e["class"], "cluster": cl["cluster"], "paste": cl["paste"], "remove": cl["remove"],
                "control_paste": cl["control_paste"], "size": cl["size"], "box": cl["box"]}
               for e in result["classes"] for cl in e["clusters"] if cl["flagged"]]
    result["flagged"] = sorted(flagged, key=lambda f: -(f["paste"]["value"] or 0))  # the strongest evidence first
    result["n_classes_analysed"] = sum(1 for e in result["classes"] if "k" in e)
    return result, arrays


def counterfactual(net, x, x8, c: int, cl: dict, region, members, source: int, others, rng, batch: int,
                   k: int) -> np.ndarray:
    """Paste and remove the flagged cluster's region and a random region of its size (the control); the rates
    go into `cl`; returns the evidence images (the k images whose prediction changed first)."""
    H, W = x.shape[-2:]
    cl["box"] = box_of(region, H, W)
    cl["paste"], cl["remove"], ev = flip_rates(net, x, c, source, members, others, cl["box"], batch)
    cl["control_box"] = random_box(cl["box"], H, W, rng)
    cl["control_paste"], cl["control_remove"], _ = flip_rates(net, x, c, source, members, others, cl["control_box"],
                                                              batch)
    pick_p = np.argsort(ev["paste"] != c, kind="stable")[:k]
    pick_r = np.argsort(ev["remove"] == c, kind="stable")[:k]
    cl["evidence_preds"] = {"paste": ev["paste"][pick_p].tolist(), "remove": ev["remove"][pick_r].tolist()}
    pasted, removed = ev["pasted"][torch.as_tensor(pick_p)], ev["removed"][torch.as_tensor(pick_r)]
    return _evidence(x8, others[pick_p], pasted, members[pick_r], removed, k)


def _evidence(x8, others, pasted, members, removed, k) -> np.ndarray:
    """(4, k, H, W, 3) uint8: images of other classes before and after the paste, members before and after
    the removal (padded with zeros)."""
    to8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
    H, W = x8.shape[-2:]
    out = np.zeros((4, k, H, W, 3), np.uint8)
    for row, imgs in enumerate((x8[torch.as_tensor(others)].permute(0, 2, 3, 1).numpy(), to8(pasted),
                                x8[torch.as_tensor(members)].permute(0, 2, 3, 1).numpy(), to8(removed))):
        out[row, :len(imgs)] = imgs
    return out


def run_clever_hans(model_path, manifest, options: dict, seed: int, device: str, threads: int, out) -> dict:
    t0 = time.time()
    model, spec, net, dev = pixel_model(model_path, seed, device, threads, frozen=True)
    x8, y, _ = robustness_images(manifest, spec, options["max_images"], seed)
    result, arrays = analyse(net, x8, y, list(spec["class_names"]), options, seed, dev)
    result["class_names"] = list(spec["class_names"])
    result["seconds"] = round(time.time() - t0, 2)
    H, W = x8.shape[-2:]
    e = options["examples"]
    save_npz(out, result,
             cluster_maps=np.array(arrays["cluster_maps"], np.float32).reshape(-1, options["grid"], options["grid"]),
             cluster_class=np.array(arrays["cluster_class"], np.int64),
             cluster_thumbs=np.array(arrays["cluster_thumbs"], np.uint8).reshape(-1, e, H, W, 3),
             evidence=np.array(arrays["evidence"], np.uint8).reshape(-1, 4, e, H, W, 3))
    for f in result["flagged"]:
        log.info("flagged: %s cluster %d (%d images): paste flip %.2f [%.2f, %.2f] (control %.2f), remove flip %.2f",
                 f["class"], f["cluster"], f["size"], f["paste"]["value"] or 0, f["paste"]["ci_low"] or 0,
                 f["paste"]["ci_high"] or 0, f["control_paste"]["value"] or 0, f["remove"]["value"] or 0)
    log.info("SpRAy over %d images with %s: %d classes analysed, %d cluster(s) flagged (%.1fs)", result["n"],
             result["method"], result["n_classes_analysed"], len(result["flagged"]), result["seconds"])
    return result
