"""Behaviour under change: invariance curves per transform family (with Grad-CAM drift) and calibration
(reliability, ECE, MCE, NLL, Brier) before and after temperature scaling fitted on the validation
split; the robustness sample that the adversarial stage (adversarial.py) shares.

All model calls are batched; transforms are torchvision v2 functionals applied to whole batches.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from . import CvauditError
from .data import load_rgb, read_manifest
from .evaluate import predict_proba
from .pixels import image_seed, pixel_model
from .io import save_npz, write_json
from .models import auto_batch, display_transform, load_model, resolve_device
from .train import seed_everything

log = logging.getLogger("cvaudit.robust")


# ----------------------------------------------------------------------------- calibration
def _bin_gaps(conf, correct, which, bins, axis=-1):
    """sum over bins of |accuracy - confidence| weighted by the bin's share (works on resampled rows)."""
    conf, correct, which = np.atleast_2d(conf), np.atleast_2d(correct), np.atleast_2d(which).astype(int)
    n = conf.shape[-1]
    out = np.zeros(conf.shape[0])
    for b in range(bins):
        m = which == b
        cnt = m.sum(-1)
        gap = np.abs((correct * m).sum(-1) - (conf * m).sum(-1))  # = count * |acc - conf| of the bin
        out += np.where(cnt > 0, gap, 0.0) / n
    return out


def calibration_metrics(probs: np.ndarray, targets: np.ndarray, bins: int = 15, seed: int | None = None) -> dict:
    """ECE and MCE over `bins` equal-width confidence bins (Guo et al.), NLL, Brier score (sum over
    classes of the squared error, averaged over images) and the reliability diagram's bins. With a
    seed: ECE's bootstrap interval over images (ece_ci) and the equal-mass-bin ECE (bins holding the
    same number of images, less biased where confidences crowd one end; Nixon et al. 2019)."""
    probs = np.asarray(probs, np.float64)
    n = len(targets)
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == targets).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows, ece, mce = [], 0.0, 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            rows.append({"lo": edges[b], "hi": edges[b + 1], "count": 0, "accuracy": None, "confidence": None})
            continue
        acc, cf = correct[m].mean(), conf[m].mean()
        ece += m.sum() / n * abs(acc - cf)
        mce = max(mce, abs(acc - cf))
        rows.append({"lo": edges[b], "hi": edges[b + 1], "count": int(m.sum()), "accuracy": acc, "confidence": cf})
    onehot = np.eye(probs.shape[1])[targets]
    out = {"ece": float(ece), "mce": float(mce), "accuracy": float(correct.mean()),
           "nll": float(-np.log(np.clip(probs[np.arange(n), targets], 1e-12, 1)).mean()),
           "brier": float(((probs - onehot) ** 2).sum(1).mean()), "mean_confidence": float(conf.mean()),
           "bins": rows, "n": int(n)}
    if seed is not None and n:
        from . import stats
        out["ece_ci"] = stats.bootstrap(lambda c, k, w, axis=-1: _bin_gaps(c, k, w, bins), conf, correct, which,
                                        seed=seed, value=float(ece))
        mass = np.minimum((np.argsort(np.argsort(conf, kind="stable")) * bins) // n, bins - 1)
        out["ece_equal_mass"] = float(_bin_gaps(conf, correct, mass, bins)[0])
        filled = [r["count"] for r in rows if r["count"]]
        out["images_per_bin"] = float(np.median(filled)) if filled else 0.0
        out["enough_per_bin"] = bool(filled) and out["images_per_bin"] >= MIN_PER_BIN
    return out


MIN_PER_BIN = 10  # a reliability bin with fewer images says little; below this median the diagram cannot support a verdict


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T): a 1-D convex problem in
    log T, solved by bounded scalar minimisation (scipy)."""
    from scipy.optimize import minimize_scalar
    z, t = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(targets)

    def nll(log_t):
        return float(F.cross_entropy(z / np.exp(log_t), t))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def scaled(logits: np.ndarray, temperature: float) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, 1).numpy()


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Logits up to a per-image constant (which softmax ignores), from saved probabilities."""
    return np.log(np.clip(np.asarray(probs, np.float64), 1e-30, 1))


MIN_VAL_ERRORS = 2  # fewer misclassified validation images and temperature scaling is not applicable


def run_calibration(model_path, manifest, test_probs, options: dict, seed: int, device: str, threads: int,
                    out) -> dict:
    t0 = time.time()
    seed_everything(seed, threads)
    dev = resolve_device(device)
    with np.load(test_probs, allow_pickle=False) as z:
        test_probs_arr, test_targets = z["probs"], z["targets"]
    test_logits = log_probs(test_probs_arr)
    before = calibration_metrics(test_probs_arr, test_targets, options["bins"], seed=seed)
    if not before["enough_per_bin"]:  # the interval then rests on a few images per bin: no verdict
        before["ece_ci"]["ci_low"] = before["ece_ci"]["ci_high"] = None
        before["ece_ci"]["note"] = (f"median {before['images_per_bin']:g} images per filled bin (at least {MIN_PER_BIN} "
                                    "needed): the reliability diagram cannot support a verdict")
    result = {"bins": options["bins"], "before": before, "after": None, "temperature": None,
              "val": None, "reason": ""}
    val = read_manifest(manifest, "val")
    if len(val) < 10:
        result["reason"] = f"the validation split has {len(val)} images (at least 10 needed to fit a temperature)"
    else:
        model, spec = load_model(model_path, dev)
        index = {c: i for i, c in enumerate(spec["class_names"])}
        val_logits = log_probs(predict_proba(model, val, spec, dev))
        val_targets = np.array([index[r["label"]] for r in val])
        errors = int((val_logits.argmax(1) != val_targets).sum())
        if errors < MIN_VAL_ERRORS:  # NLL falls forever as T -> 0: the fit would only sharpen the probabilities
            result["reason"] = (f"the validation split is (nearly) perfectly classified ({errors} error(s) in {len(val)} "
                                "images): a temperature fitted on it only sharpens the probabilities, so it is not "
                                "applicable; the ECE above stands as it is")
            result["val"] = {"n": len(val), "errors": errors}
            result["seconds"] = round(time.time() - t0, 2)
            write_json(out, result)
            return result
        temp = fit_temperature(val_logits, val_targets)
        result.update(temperature=temp, after=calibration_metrics(scaled(test_logits, temp), test_targets,
                                                                   options["bins"], seed=seed),
                      val={"n": len(val), "nll_before": calibration_metrics(scaled(val_logits, 1.0), val_targets)["nll"],
                           "nll_after": calibration_metrics(scaled(val_logits, temp), val_targets)["nll"]})
    result["seconds"] = round(time.time() - t0, 2)
    write_json(out, result)
    log.info("calibration: ECE %.4f -> %s (T = %s)", before["ece"],
             "n/a" if result["after"] is None else f"{result['after']['ece']:.4f}", result["temperature"])
    return result


# ----------------------------------------------------------------------------- test images in memory
def robustness_images(manifest, spec: dict, n: int, seed: int, start: int = 0,
                      stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A seeded, class-stratified sample of at most n test images, as the model sees them (uint8,
    resized to its input size), with targets in the model's class indices. start/stop: only that
    slice of the sample is read (a shard); robustness_sample_size gives the sample's length."""
    rows = read_manifest(manifest, "test")
    if not rows:
        raise CvauditError("the dataset has no test images; raise config key datasets.*.split.test")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    if len(rows) > n:  # round-robin over classes keeps every class represented
        by_class: dict[str, list[int]] = {}
        for i in order:
            by_class.setdefault(rows[i]["label"], []).append(int(i))
        pick, queues = [], list(by_class.values())
        while len(pick) < n:
            for q in queues:
                if q and len(pick) < n:
                    pick.append(q.pop(0))
        order = np.array(sorted(pick))
    else:
        order = np.arange(len(rows))
    order = order[start:stop]
    show = display_transform(spec)
    index = {c: i for i, c in enumerate(spec["class_names"])}
    x = torch.stack([show(load_rgb(rows[i]["path"])) for i in order]) if len(order) else \
        torch.zeros((0, 3, spec["input_size"], spec["input_size"]), dtype=torch.uint8)
    y = torch.tensor([index[rows[i]["label"]] for i in order], dtype=torch.long)
    return x, y, [rows[i]["path"] for i in order]


def robustness_sample_size(manifest, n: int) -> int:
    return min(n, len(read_manifest(manifest, "test")))


@torch.no_grad()
def predict(net, x01: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its probability for images in [0, 1], in batches."""
    preds, conf = [], []
    for i in range(0, len(x01), batch):
        p = torch.softmax(net(x01[i:i + batch]).float(), 1)
        c, q = p.max(1)
        preds.append(q.cpu())
        conf.append(c.cpu())
    return torch.cat(preds), torch.cat(conf)


# ----------------------------------------------------------------------------- invariance
def _jpeg(x: torch.Tensor, quality: float) -> torch.Tensor:
    """JPEG round trip per image with Pillow (torchvision's encoder is deprecated)."""
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


IDENTITY = {"translate": 0.0, "rotate": 0.0, "scale": 1.0, "brightness": 1.0, "contrast": 1.0, "noise": 0.0,
            "blur": 0.0, "jpeg": 100}


def transform(family: str, x: torch.Tensor, severity: float, gen: torch.Generator | None = None,
              seeds=None) -> torch.Tensor:
    """One transform family at one severity on a batch of images in [0, 1] (N, 3, H, W). Severity 0
    (or 1 for scale and contrast and brightness factors, 100 for JPEG quality) is the identity.
    Noise is drawn from `gen`, or, given `seeds` (one int per image), from a generator per image, so
    an image gets the same noise whatever else is in its batch or shard."""
    if family not in IDENTITY:
        raise CvauditError(f"unknown transform family '{family}' (config key robustness.invariance)")
    if severity == IDENTITY[family]:
        return x
    if family == "translate":  # fraction of the image size, to the right and down
        d = int(round(severity * x.shape[-1]))
        return TF.affine(x, angle=0.0, translate=[d, d], scale=1.0, shear=[0.0, 0.0])
    if family == "rotate":  # degrees
        return TF.rotate(x, float(severity), interpolation=TF.InterpolationMode.BILINEAR)
    if family == "scale":  # zoom factor around the centre
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=float(severity), shear=[0.0, 0.0],
                         interpolation=TF.InterpolationMode.BILINEAR)
    if family == "brightness":
        return TF.adjust_brightness(x, float(severity))
    if family == "contrast":
        return TF.adjust_contrast(x, float(severity))
    if family == "noise":  # standard deviation in [0, 1] pixel units
        if seeds is not None:
            noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(int(k)))
                                 for k in seeds]) if len(x) else torch.zeros_like(x)
        else:
            noise = torch.randn(x.shape, generator=gen)
        return (x + severity * noise.to(x.device)).clamp(0, 1)
    if family == "blur":  # sigma in pixels
        k = int(2 * np.ceil(3 * severity) + 1)
        return TF.gaussian_blur(x, [k, k], [float(severity)] * 2)
    if family == "jpeg":  # quality 1..100
        return _jpeg(x, min(severity, 100))




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


def _slice(n: int, start: int, stop: int | None) -> tuple[int, int]:
    stop = n if stop is None else min(stop, n)
    return min(start, stop), stop


def invariance_part(family: str, model_path, manifest, options: dict, seed: int, device: str, threads: int,
                    start: int = 0, stop: int | None = None, loaded_model=None) -> dict:
    """Per image of the robustness sample [start, stop): correct and unchanged predictions at each
    severity. Each image's result depends on it alone (noise seeded per image), so parts
    concatenated equal one whole run."""
    t0 = time.time()
    model, spec, net, dev = loaded_model or pixel_model(model_path, seed, device, threads)
    n_total = robustness_sample_size(manifest, options["max_images"])
    start, stop = _slice(n_total, start, stop)
    x8, y, _ = robustness_images(manifest, spec, options["max_images"], seed, start, stop)
    x = x8.float().div(255).to(dev)
    batch = auto_batch(x8.shape[-2], x8.shape[-1], dev)
    clean_pred, _ = predict(net, x, batch)
    correct, same = [], []
    for k, s in enumerate(options["severities"]):
        seeds = [image_seed(image_seed(seed, k), j) for j in range(start, stop)]
        p, _ = predict(net, transform(family, x, s, seeds=seeds), batch)
        correct.append((p == y).numpy())
        same.append((p == clean_pred).numpy())
    n_sev = len(options["severities"])
    return {"start": start, "n_total": n_total, "clean_correct": (clean_pred == y).numpy(),
            "correct": np.array(correct, dtype=bool).reshape(n_sev, stop - start),
            "same": np.array(same, dtype=bool).reshape(n_sev, stop - start), "seconds": time.time() - t0}


def run_invariance(family: str, model_path, manifest, options: dict, drift: dict, seed: int, device: str,
                   threads: int, out, parts: list | None = None) -> dict:
    """Accuracy and consistency per severity over the robustness sample (computed here, or merged from
    the invariance_shard jobs' parts), the robustness score, and Grad-CAM drift for translate/rotate."""
    from .methods import GradCAM, NotApplicable, attribute_batched
    from .io import load_npz

    t0 = time.time()
    if parts:
        loaded = [load_npz(p) for p in parts]
        loaded = [{**a, **a.pop("meta")} for a in loaded]
    else:
        model_once = pixel_model(model_path, seed, device, threads)  # shared with the drift below
        loaded = [invariance_part(family, model_path, manifest, options, seed, device, threads,
                                  loaded_model=model_once)]
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
        model, spec, net, dev = model_once if not parts else pixel_model(model_path, seed, device, threads)
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


def run_invariance_shard(family: str, model_path, manifest, options: dict, seed: int, device: str, threads: int,
                         shard: int, shard_size: int, out) -> None:
    part = invariance_part(family, model_path, manifest, options, seed, device, threads,
                           start=shard * shard_size, stop=(shard + 1) * shard_size)
    save_npz(out, {k: part[k] for k in ("start", "n_total", "seconds")},
             **{k: part[k] for k in ("clean_correct", "correct", "same")})
    log.info("%s: shard %d, %d images (%.1fs)", family, shard, len(part["clean_correct"]), part["seconds"])
