"""The corruptions stage: the 15 common corruptions of Hendrycks & Dietterich (2019) at 5 severities on the
robustness sample (cvaudit.robust.corruption_functions), per image right or wrong and the confidence, the
accuracy per corruption and severity (Wilson intervals) and the ECE per severity beside the clean ECE
(calibration under shift), how well the confidence tells the corrupted images from the clean ones (MSP AUROC per
severity), and the corruption errors (CE) and mCE against the dataset's reference model,
whose own corruptions job is this job's input (robustness.corruptions.reference; the reference itself has
none: its CE is 1 by definition).

CE_c = sum_s E(c, s) / sum_s E_ref(c, s); mCE = mean_c CE_c; relative CE_c subtracts each model's clean
error from each term first (the paper's definitions). Intervals: a paired bootstrap over images.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from cvaudit.core import progress, stats
from cvaudit.core.calibration_error import ece_estimate
from cvaudit.core.files import save_npz
from cvaudit.robust.corruption_functions import CORRUPTIONS, corrupt, table

log = logging.getLogger("cvaudit.robust.corruptions")


def _probs(net, x8: np.ndarray, dev, batch: int) -> np.ndarray:
    import torch
    out = []
    with torch.no_grad():
        for i in range(0, len(x8), batch):
            x = torch.from_numpy(x8[i:i + batch]).to(dev).permute(0, 3, 1, 2).float().div(255)
            out.append(torch.softmax(net(x).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def auroc_estimate(clean_conf: np.ndarray, corrupted_conf: np.ndarray, seed: int) -> dict:
    """The MSP AUROC of the clean images against their corrupted copies (every corruption at one severity), with
    the bootstrap interval of cvaudit.robust.ood (both sets resampled, each on its own: conservative here, where
    each corrupted image has its clean original among the others)."""
    from cvaudit.robust.ood import separation
    if not len(clean_conf):
        return stats.estimate(None, 0, method="bootstrap", note="no images")
    return separation({"msp": clean_conf}, {"msp": corrupted_conf}, seed)["scores"]["msp"]["auroc"]


def corrupted(x8: np.ndarray, name: str, severity: int, seed: int, start: int = 0) -> np.ndarray:
    """Images (N, H, W, 3) uint8 under one corruption; image i's randomness is its own (seeded by the
    stage seed, the corruption, the severity and its index in the sample)."""
    from cvaudit.net.pixel_space import image_seed
    k = list(CORRUPTIONS).index(name)
    return np.stack([corrupt(im, name, severity, np.random.default_rng(image_seed(seed + 7919 * k + 104729 * severity,
                                                                                   start + i)))
                     for i, im in enumerate(x8)]) if len(x8) else x8


def run_corruptions(model_path, manifest, options: dict, seed: int, device: str, threads: int, out,
                    reference=None) -> dict:
    """reference: the reference model's corruptions.npz (None: this model is its dataset's reference)."""
    from cvaudit.net.models import auto_batch
    from cvaudit.net.pixel_space import pixel_model
    from cvaudit.net.sample import robustness_images

    t0 = time.time()
    model, spec, net, dev = pixel_model(model_path, seed, device, threads, frozen=True)
    x, y, paths = robustness_images(manifest, spec, options["max_images"], seed)
    x8 = x.permute(0, 2, 3, 1).numpy()
    y = y.numpy()
    batch = auto_batch(x8.shape[1], x8.shape[2], dev)
    names, sevs = list(options["corruptions"]), list(options["severities"])
    clean = _probs(net, x8, dev, batch)
    clean_correct, clean_conf = clean.argmax(1) == y, clean.max(1)
    correct = np.zeros((len(names), len(sevs), len(y)), bool)
    conf = np.zeros((len(names), len(sevs), len(y)), np.float32)
    examples = np.zeros((len(names), len(sevs)) + x8.shape[1:], np.uint8)
    progress.task("corruptions", len(names) * len(sevs), "corruption-severity pairs")
    for a, name in enumerate(names):
        t1 = time.time()
        for b, s in enumerate(sevs):
            xs = corrupted(x8, name, s, seed)
            p = _probs(net, xs, dev, batch)
            correct[a, b], conf[a, b] = p.argmax(1) == y, p.max(1)
            if len(xs):
                examples[a, b] = xs[0]
            progress.advance()
        log.info("%s: accuracy %s (%.1fs)", name, np.round(correct[a].mean(1), 3).tolist(), time.time() - t1)
    n = len(y)
    meta = {"corruptions": names, "categories": [CORRUPTIONS[c] for c in names], "severities": sevs, "n": n,
            "table": table(min(x8.shape[1:3])) if n else None, "input_size": int(x8.shape[1]) if n else None,
            "clean": stats.proportion(int(clean_correct.sum()), n),
            "accuracy": [[stats.proportion(int(correct[a, b].sum()), n) for b in range(len(sevs))] for a in range(len(names))],
            "clean_ece": ece_estimate(clean_conf, clean_correct, seed=seed),
            "ece_by_severity": [ece_estimate(conf[:, b].ravel(), correct[:, b].ravel(), seed=seed) for b in range(len(sevs))],
            # does the top class's probability tell the corrupted images from the clean ones (cvaudit.robust.ood)?
            "msp_auroc_by_severity": [auroc_estimate(clean_conf, conf[:, b].ravel(), seed) for b in range(len(sevs))],
            "mean_accuracy": float(correct.mean()) if n else None}
    own = {"correct": correct, "clean_correct": clean_correct, "paths": np.array(paths), "meta": meta}
    meta["errors"] = errors_against(own, reference, seed)
    meta["seconds"] = round(time.time() - t0, 2)
    save_npz(out, meta, correct=correct, confidence=conf, clean_correct=clean_correct, clean_confidence=clean_conf,
             paths=np.array(paths), examples=examples)
    log.info("corruptions: mean accuracy %s over %d x %d on %d images (%.1fs)", meta["mean_accuracy"], len(names),
             len(sevs), n, meta["seconds"])
    return meta


def errors_against(own: dict, reference, seed: int) -> dict:
    """corruption_errors against the reference's corruptions.npz (a reference whose stage failed leaves CE and
    mCE out, with the reason; None: this model is the reference)."""
    from pathlib import Path

    from cvaudit.core.files import load_npz, stage_failure
    if reference is None:
        errors = corruption_errors(own, None, None, seed)
        errors["note"] = "this model is its dataset's reference: its CE is 1 by definition"
        return errors
    name = Path(reference).parts[-3]  # results/{reference}/robust/corruptions.npz
    if rec := stage_failure(reference):
        errors = corruption_errors(own, None, name, seed)
        errors["note"] = f"the reference {name}'s corruptions stage failed ({rec['error']})"
        return errors
    return corruption_errors(own, load_npz(reference, keys=("correct", "clean_correct", "paths")), name, seed)


def _ce(*samples, axis=-1):
    """mean_c sum_i a_c / sum_i b_c over the first half of samples (a) and the second (b)."""
    k = len(samples) // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean([np.sum(samples[c], axis=axis) / np.sum(samples[k + c], axis=axis) for c in range(k)], axis=0)


def corruption_errors(own: dict, ref: dict | None, ref_name: str | None, seed: int = 0) -> dict:
    """CE per corruption and mCE (plain and relative) of `own` against `ref` (the corruptions stage's
    arrays), with paired bootstrap intervals over the images; ref None: the model is its own reference or
    none was available, and only the mean corruption error is given."""
    wrong = ~np.asarray(own["correct"], bool)  # (C, S, N)
    names = own["meta"]["corruptions"]
    out = {"reference": ref_name, "corruptions": names, "mean_error": stats.mean(wrong.mean((0, 1)), seed=seed),
           "ce": None, "mce": None, "relative_mce": None, "note": ""}
    if ref is None:
        out["note"] = "no reference model: CE and mCE are relative to one (robustness.corruptions.reference)"
        return out
    if ref["meta"]["corruptions"] != names or ref["meta"]["severities"] != own["meta"]["severities"] or \
            list(map(str, ref["paths"])) != list(map(str, own["paths"])):
        out["note"] = f"the reference {ref_name} was run on other corruptions, severities or images"
        return out
    if (ref["meta"].get("input_size"), ref["meta"].get("table")) != (own["meta"].get("input_size"), own["meta"].get("table")):
        # the corruptions' parameters are in pixels: the same table at another resolution is another corruption
        out["note"] = (f"no CE: the reference {ref_name} was corrupted at {ref['meta'].get('input_size')} px "
                       f"({ref['meta'].get('table')} table), this model at {own['meta'].get('input_size')} px "
                       f"({own['meta'].get('table')} table); CE compares robustness only at the same resolution "
                       "(robustness.corruptions.reference: a model of the same input size)")
        return out
    rwrong = ~np.asarray(ref["correct"], bool)
    a = [wrong[c].sum(0).astype(float) for c in range(len(names))]  # per image: errors summed over severities
    b = [rwrong[c].sum(0).astype(float) for c in range(len(names))]
    if any(v.sum() == 0 for v in b):
        out["note"] = f"the reference {ref_name} makes no error under some corruption: CE is undefined there"
    ce = [float(a[c].sum() / b[c].sum()) if b[c].sum() else None for c in range(len(names))]
    undefined = "the reference makes no error here: CE undefined"
    out["ce"] = [stats.bootstrap(_ce, a[c], b[c], seed=seed, value=ce[c]) if ce[c] is not None else
                 stats.estimate(None, len(a[c]), method="bootstrap", note=undefined) for c in range(len(names))]
    if all(v is not None for v in ce):
        out["mce"] = stats.bootstrap(_ce, *a, *b, seed=seed, value=float(np.mean(ce)))
        if out["mce"]["ci_high"] is None:  # resamples where the reference makes no error: CE infinite or 0/0
            out["mce"]["note"] = (f"{'no upper bound' if out['mce']['ci_low'] is not None else 'no interval'}: in some "
                                  f"resamples of the images {ref_name} makes no error under a corruption, so its CE is "
                                  "unbounded or undefined; add images")
        s = wrong.shape[1]
        ra = [a[c] - s * (~np.asarray(own["clean_correct"], bool)) for c in range(len(names))]
        rb = [b[c] - s * (~np.asarray(ref["clean_correct"], bool)) for c in range(len(names))]
        if all(v.sum() > 0 for v in rb):
            out["relative_mce"] = stats.bootstrap(_ce, *ra, *rb, seed=seed,
                                                  value=float(np.mean([ra[c].sum() / rb[c].sum() for c in range(len(names))])))
    return out
