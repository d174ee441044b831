"""The calibrate stage: reliability, ECE (with its bootstrap interval and the equal-mass ECE), MCE, NLL and
Brier before and after temperature scaling fitted on the validation split (Guo et al. 2017), and conformal
prediction sets calibrated on the same split (cvaudit.robust.conformal), and the accuracy gained by abstaining on the
least confident test images (cvaudit.robust.selective).
calibration_metrics is numpy only (torch is imported by the functions that need it): the slices stage
reuses it per group without importing torch."""
from __future__ import annotations

import logging
import time

import numpy as np

from cvaudit.core.calibration_error import bin_gaps, bin_of, ece_estimate
from cvaudit.core.files import write_json

log = logging.getLogger("cvaudit.robust.calibrate")


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
    which = bin_of(conf, bins)
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
        out["ece_ci"] = ece_estimate(conf, correct, bins, seed, value=float(ece))
        mass = np.minimum((np.argsort(np.argsort(conf, kind="stable")) * bins) // n, bins - 1)
        out["ece_equal_mass"] = float(bin_gaps(conf, correct, mass, bins)[0])
        filled = [r["count"] for r in rows if r["count"]]
        out["images_per_bin"] = float(np.median(filled)) if filled else 0.0
        out["enough_per_bin"] = bool(filled) and out["images_per_bin"] >= MIN_PER_BIN
    return out


MIN_PER_BIN = 10  # a reliability bin with fewer images says little; below this median the diagram cannot support a verdict


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T): a 1-D convex problem in
    log T, solved by bounded scalar minimisation (scipy)."""
    import torch
    import torch.nn.functional as F
    from scipy.optimize import minimize_scalar
    z, t = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(targets)

    def nll(log_t):
        return float(F.cross_entropy(z / np.exp(log_t), t))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def scaled(logits: np.ndarray, temperature: float) -> np.ndarray:
    import torch
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, 1).numpy()


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Logits up to a per-image constant (which softmax ignores), from saved probabilities."""
    return np.log(np.clip(np.asarray(probs, np.float64), 1e-30, 1))


MIN_VAL_ERRORS = 2  # fewer misclassified validation images and temperature scaling is not applicable


def run_calibration(model_path, manifest, test_probs, options: dict, seed: int, device: str, threads: int,
                    out, groups: list[str] | None = None) -> dict:
    from cvaudit.core.manifest import group_values, read_manifest
    from cvaudit.net.models import load_model, resolve_device
    from cvaudit.net.pixel_space import predict_proba, seed_everything
    from cvaudit.robust.conformal import conformal
    from cvaudit.robust.selective import selective

    t0 = time.time()
    seed_everything(seed, threads)
    dev = resolve_device(device)
    with np.load(test_probs, allow_pickle=False) as z:
        test_probs_arr, test_targets, test_paths = z["probs"], z["targets"], [str(p) for p in z["paths"]]
    test_logits = log_probs(test_probs_arr)
    before = calibration_metrics(test_probs_arr, test_targets, options["bins"], seed=seed)
    if not before["enough_per_bin"]:  # the interval then rests on a few images per bin: no verdict
        before["ece_ci"]["ci_low"] = before["ece_ci"]["ci_high"] = None
        before["ece_ci"]["note"] = (f"median {before['images_per_bin']:g} images per filled bin (at least {MIN_PER_BIN} "
                                    "needed): the reliability diagram cannot support a verdict")
    result = {"bins": options["bins"], "before": before, "after": None, "temperature": None,
              "val": None, "reason": "", "conformal": None,
              "selective": selective(test_probs_arr, test_targets, seed=seed)}
    val = read_manifest(manifest, "val")
    model, spec = load_model(model_path, dev)
    index = {c: i for i, c in enumerate(spec["class_names"])}
    val_probs = predict_proba(model, val, spec, dev) if val else np.zeros((0, spec["num_classes"]), np.float32)
    val_targets = np.array([index[r["label"]] for r in val], dtype=np.int64)
    conf = options.get("conformal") or {}
    if conf.get("enabled"):  # on the probabilities as the model gives them: the sets do not depend on a temperature
        result["conformal"] = conformal(val_probs, val_targets, test_probs_arr, test_targets, spec["class_names"], conf,
                                        paths=test_paths, groups=group_values(manifest, test_paths, groups or []),
                                        seed=seed)
    val_logits = log_probs(val_probs)
    errors = int((val_logits.argmax(1) != val_targets).sum())
    if len(val) < 10:
        result["reason"] = f"the validation split has {len(val)} images (at least 10 needed to fit a temperature)"
    elif errors < MIN_VAL_ERRORS:  # NLL falls forever as T -> 0: the fit would only sharpen the probabilities
        result["reason"] = (f"the validation split is (nearly) perfectly classified ({errors} error(s) in {len(val)} "
                            "images): a temperature fitted on it only sharpens the probabilities, so it is not "
                            "applicable; the ECE above stands as it is")
        result["val"] = {"n": len(val), "errors": errors}
    else:
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
