"""The invariance stage: accuracy and prediction stability per transform family and severity (torchvision v2
functionals on whole batches), the robustness score, and how far Grad-CAM moves with a translated image."""
from __future__ import annotations

import functools
import logging
import os
import time

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from cvaudit import CvauditError
from cvaudit.core.files import write_json
from cvaudit.core.registry import FAMILIES, load
from cvaudit.net.models import auto_batch
from cvaudit.net.pixel_space import image_seed, pixel_model, predict
from cvaudit.net.sample import _slice, robustness_images, robustness_sample_size

log = logging.getLogger("cvaudit.robust.invariance")

# Model batches converted to floats (and transformed) at a time: the robustness sample stays uint8, so a
# stage's memory does not grow with robustness.max_images.
CHUNK_BATCHES = 8


def _jpeg(x: torch.Tensor, quality: float) -> torch.Tensor:
    """JPEG round trip per image with Pillow (torchvision's encoder is deprecated)."""
    if not len(x):  # an empty shard
        return x
    import io

    from PIL import Image
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for im in u8:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as j:
            out.append(np.asarray(j.convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255).to(x.device)


# The severity that leaves an image unchanged, per family (the registry's, cvaudit.core.registry.FAMILIES).
IDENTITY = {name: family.identity for name, family in FAMILIES.items()}


def translate(x, severity, gen=None, seeds=None):  # fraction of the image size, to the right and down
    d = int(round(severity * x.shape[-1]))
    return TF.affine(x, angle=0.0, translate=[d, d], scale=1.0, shear=[0.0, 0.0])


def rotate(x, severity, gen=None, seeds=None):  # degrees
    return TF.rotate(x, float(severity), interpolation=TF.InterpolationMode.BILINEAR)


def scale(x, severity, gen=None, seeds=None):  # zoom factor around the centre
    return TF.affine(x, angle=0.0, translate=[0, 0], scale=float(severity), shear=[0.0, 0.0],
                     interpolation=TF.InterpolationMode.BILINEAR)


def brightness(x, severity, gen=None, seeds=None):
    return TF.adjust_brightness(x, float(severity))


def contrast(x, severity, gen=None, seeds=None):
    return TF.adjust_contrast(x, float(severity))


def noise(x, severity, gen=None, seeds=None):  # standard deviation in [0, 1] pixel units
    if seeds is not None:
        draw = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(int(k)))
                            for k in seeds]) if len(x) else torch.zeros_like(x)
    else:
        draw = torch.randn(x.shape, generator=gen)
    return (x + severity * draw.to(x.device)).clamp(0, 1)


def blur(x, severity, gen=None, seeds=None):  # sigma in pixels
    k = int(2 * np.ceil(3 * severity) + 1)
    return TF.gaussian_blur(x, [k, k], [float(severity)] * 2)


def jpeg(x, severity, gen=None, seeds=None):  # quality 1..100
    return _jpeg(x, min(severity, 100))


def transform(family: str, x: torch.Tensor, severity: float, gen: torch.Generator | None = None,
              seeds=None) -> torch.Tensor:
    """One transform family at one severity on a batch of images in [0, 1] (N, 3, H, W). Severity 0
    (or 1 for scale and contrast and brightness factors, 100 for JPEG quality) is the identity.
    Noise is drawn from `gen`, or, given `seeds` (one int per image), from a generator per image, so
    an image gets the same noise whatever else is in its batch or shard."""
    if family not in FAMILIES:
        raise CvauditError(f"unknown transform family '{family}' (config key robustness.invariance); "
                           f"available: {', '.join(FAMILIES)}")
    if severity == IDENTITY[family]:
        return x
    return load(FAMILIES[family].ref)(x, severity, gen, seeds)


def robustness_score(severities: list[float], accuracy: list[float], clean: float, identity: float) -> float | None:
    """Area under the accuracy curve over the distance from the identity, relative to clean accuracy
    over the same range (1 = no loss). Severities at the same distance (e.g. -15 and +15 degrees)
    are averaged into one point first, so a symmetric pair counts once."""
    if clean <= 0:
        return None
    d = np.round(np.abs(np.asarray(severities, float) - identity), 9)
    acc = np.asarray(accuracy, float)
    d, inv = np.unique(d, return_inverse=True)  # sorted distances
    acc = np.bincount(inv, weights=acc) / np.bincount(inv)
    if len(d) < 2 or d[-1] == 0:
        return float(acc.mean() / clean)
    return float(np.trapezoid(acc, d) / (clean * (d[-1] - d[0])))


def equivariance_error(cam_of_moved: np.ndarray, moved_cam: np.ndarray) -> float:
    """Mean over images of ||a - b||_1 / (||a||_1 + ||b||_1) between the map of the moved image (a)
    and the moved map of the clean image (b), each scaled to max 1 first: 0 when the explanation
    moves with the image, 1 when the two maps do not overlap at all."""
    def norm(m):
        m = np.clip(m, 0, None).reshape(len(m), -1)
        return m / np.maximum(m.max(1, keepdims=True), 1e-12)
    a, b = norm(cam_of_moved), norm(moved_cam)
    return float((np.abs(a - b).sum(1) / np.maximum(a.sum(1) + b.sum(1), 1e-12)).mean())


def _model(job: dict):
    """The model, loaded once per job: a job that computes its one part and the drift shares it."""
    st = os.stat(job["model"])
    return _load(str(job["model"]), st.st_mtime_ns, st.st_size, job["seed"], job["device"], job["threads"])


@functools.lru_cache(maxsize=1)
def _load(path: str, mtime_ns: int, size: int, seed: int, device: str, threads: int):
    return pixel_model(path, seed, device, threads)


def part(family: str, job: dict, start: int = 0, stop: int | None = None) -> tuple[dict, dict]:
    """Per image of the robustness sample [start, stop): correct and unchanged predictions at each
    severity. Each image's result depends on it alone (noise seeded per image), so parts
    concatenated equal one whole run; the images are streamed through in chunks of CHUNK_BATCHES
    model batches. job (cvaudit.core.shards): model, data (the manifest), options (max_images,
    severities), seed, device, threads."""
    t0 = time.time()
    options, seed, manifest = job["options"], job["seed"], job["data"]
    model, spec, net, dev = _model(job)
    n_total = robustness_sample_size(manifest, options["max_images"])
    start, stop = _slice(n_total, start, stop)
    x8, y, _ = robustness_images(manifest, spec, options["max_images"], seed, start, stop)
    batch = auto_batch(x8.shape[-2], x8.shape[-1], dev)
    n_sev, chunk = len(options["severities"]), batch * CHUNK_BATCHES
    clean, correct, same = [np.zeros(0, bool)], [np.zeros((n_sev, 0), bool)], [np.zeros((n_sev, 0), bool)]
    for lo in range(0, len(x8), chunk):
        x, yc = x8[lo:lo + chunk].to(dev).float().div(255), y[lo:lo + chunk]
        clean_pred, _ = predict(net, x, batch)
        clean.append((clean_pred == yc).numpy())
        c, sm = [], []
        for k, s in enumerate(options["severities"]):
            seeds = [image_seed(image_seed(seed, k), j) for j in range(start + lo, start + lo + len(x))]
            p, _ = predict(net, transform(family, x, s, seeds=seeds), batch)
            c.append((p == yc).numpy())
            sm.append((p == clean_pred).numpy())
        correct.append(np.array(c, dtype=bool).reshape(n_sev, len(x)))
        same.append(np.array(sm, dtype=bool).reshape(n_sev, len(x)))
    return ({"start": start, "n_total": n_total, "seconds": time.time() - t0},
            {"clean_correct": np.concatenate(clean), "correct": np.concatenate(correct, axis=1),
             "same": np.concatenate(same, axis=1)})


def merge(family: str, job: dict, parts: list[tuple[dict, dict]], out) -> dict:
    """The invariance stage's output (cvaudit.core.shards): accuracy and consistency per severity over the
    robustness sample, the robustness score, and Grad-CAM drift for translate/rotate (job key drift)."""
    from cvaudit.explain.methods import GradCAM, NotApplicable, attribute_batched

    t0 = time.time()
    options, drift, seed, manifest = job["options"], job["drift"], job["seed"], job["data"]
    loaded = [{**arrays, **meta} for meta, arrays in parts]
    correct = np.concatenate([p["correct"] for p in loaded], axis=1)
    same = np.concatenate([p["same"] for p in loaded], axis=1)
    clean_acc = float(np.concatenate([p["clean_correct"] for p in loaded]).mean())
    severities = list(options["severities"])
    acc, cons = [float(c.mean()) for c in correct], [float(c.mean()) for c in same]
    result = {"family": family, "severities": severities, "accuracy": acc, "consistency": cons,
              "clean_accuracy": clean_acc, "n": int(correct.shape[1]), "identity": IDENTITY[family],
              "score": robustness_score(severities, acc, clean_acc, IDENTITY[family]), "drift": None,
              "shards": len(loaded)}
    if family in ("translate", "rotate") and drift["images"] > 0:
        model, spec, net, dev = _model(job)
        x8, _, _ = robustness_images(manifest, spec, options["max_images"], seed, 0, drift["images"])
        xd = x8.float().div(255).to(dev)
        batch = auto_batch(x8.shape[-2], x8.shape[-1], dev)
        target = predict(net, xd, batch)[0].to(dev)
        cam = GradCAM(batch_size=batch, layer="auto", min_resolution=drift["min_resolution"])
        try:
            base = torch.from_numpy(attribute_batched(cam, net, xd, target))[:, None]
            errs = []
            for s in severities:
                moved = transform(family, xd, s)
                cam_of_moved = attribute_batched(cam, net, moved, target)
                moved_cam = transform(family, base.to(dev), s)[:, 0].cpu().numpy()
                errs.append(equivariance_error(cam_of_moved, moved_cam))
            result["drift"] = {"method": "gradcam", "images": int(len(xd)), "equivariance_error": errs}
        except NotApplicable as e:
            result["drift"] = {"method": "gradcam", "reason": str(e)}
    result["seconds"] = round(time.time() - t0 + sum(p["seconds"] for p in loaded), 2)
    write_json(out, result)
    log.info("%s: score %s, accuracy %s (%.1fs, %d part(s))", family, result["score"], np.round(acc, 3).tolist(),
             result["seconds"], len(loaded))
    return result
