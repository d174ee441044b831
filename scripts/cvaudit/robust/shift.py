"""The shift stage: generalisation to shifted test sets ("ImageNet vs ImageNetV2: a drop of about 10%").

A model names other datasets of the same classes (config key models.*.shift_sets); each is evaluated
beside the model's own test split: accuracy (Wilson) and ECE (bootstrap) on both, the gap in accuracy with
a Newcombe interval, and the ECE under shift. Classes are matched by name; a class the model does not
know is a config error. Images of the shifted set that the model trained or was validated on (the same
source image: the same file content or the same archive entry, e.g. a re-rendering of a training image)
are left out and counted. With robustness.shift.ood, each set is also scored as out-of-distribution data against the
model's own test images (cvaudit.robust.ood: MSP, energy and k-NN scores, AUROC and FPR at 95% TPR).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from cvaudit import CvauditError
from cvaudit.core import stats
from cvaudit.core.calibration_error import ece_estimate
from cvaudit.core.files import write_json
from cvaudit.core.manifest import read_manifest

log = logging.getLogger("cvaudit.robust.shift")


def shift_rows(model: str, shift_name: str, shift_manifest, own_manifest, class_names: list[str], max_images: int,
               seed: int) -> tuple[list[dict], int]:
    """The shifted set's images to evaluate (all its splits, a seeded sample of at most max_images), minus
    those the model saw in training or validation; raises a config error for a class the model lacks."""
    rows = read_manifest(shift_manifest)
    unknown = sorted({r["label"] for r in rows} - set(class_names))
    if unknown:
        raise CvauditError(f"config key models.{model}.shift_sets: dataset '{shift_name}' has class(es) "
                           f"{', '.join(unknown)} that model {model} does not have (its classes: "
                           f"{', '.join(class_names[:20])}{' ...' if len(class_names) > 20 else ''}); classes are matched "
                           "by name: rename them in the dataset, or remove the dataset from shift_sets")
    seen = read_manifest(own_manifest)
    seen = [r for r in seen if r["split"] in ("train", "val")]
    seen_keys = {r["sha256"] for r in seen} | {r["original"] for r in seen if r.get("original")}
    kept = [r for r in rows if r["sha256"] not in seen_keys and not (r.get("original") and r["original"] in seen_keys)]
    overlap = len(rows) - len(kept)
    if len(kept) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(kept), max_images, replace=False))
        kept = [kept[i] for i in pick]
    return kept, overlap


def _sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    if len(rows) <= n:
        return rows
    return [rows[i] for i in np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))]


class _Scorer:
    """The out-of-distribution scores of a set of images (cvaudit.robust.ood), against the model's training images'
    embeddings (a seeded sample of `reference`) and judged against its own test images (at most max_images)."""

    def __init__(self, net, spec, dev, own_manifest, options: dict, seed: int):
        from cvaudit.net.export import is_export
        self.net, self.spec, self.dev, self.k, self.seed = net, spec, dev, options["ood"]["neighbors"], seed
        self.embeddings = not is_export(net)
        # an export shows no embedding: no k-NN score, no training images to embed
        train = _sample(read_manifest(own_manifest, "train"), options["ood"]["reference"], seed) if self.embeddings else []
        test = _sample(read_manifest(own_manifest, "test"), options["max_images"], seed)
        log.info("out-of-distribution scores: embedding %d training and %d own test images", len(train), len(test))
        self.reference = self.features(train)["embeddings"] if train else None
        self.inside = self.scores(self.features(test)) if test else None
        self.meta = {"n_reference": len(train), "n_in": len(test), "neighbors": self.k,
                     "knn": self.embeddings}

    def features(self, rows: list[dict]) -> dict:
        from cvaudit.net.features import stream_features
        return stream_features(self.net, rows, self.spec, self.dev, embeddings=self.embeddings)

    def scores(self, f: dict) -> dict:
        from cvaudit.robust.ood import image_scores
        return image_scores(f["logits"], f["embeddings"], self.reference, self.k)

    def separation(self, f: dict) -> dict | None:
        from cvaudit.robust.ood import separation
        return None if self.inside is None else separation(self.inside, self.scores(f), self.seed)


def run_shift(model_path, model: str, own_manifest, own_probs, shift_manifests: dict, options: dict, seed: int,
              device: str, threads: int, out, descriptions: dict | None = None) -> dict:
    from cvaudit.net.features import stream_features
    from cvaudit.net.models import load_model, resolve_device
    from cvaudit.net.pixel_space import seed_everything

    t0 = time.time()
    seed_everything(seed, threads)
    dev = resolve_device(device)
    net, spec = load_model(model_path, dev)
    names = list(spec["class_names"])
    with np.load(own_probs, allow_pickle=False) as z:
        p, t = z["probs"], z["targets"]
    own_correct = p.argmax(1) == t
    k_in, n_in = int(own_correct.sum()), len(t)
    result = {"in_distribution": {"n": n_in, "accuracy": stats.proportion(k_in, n_in),
                                  "ece": ece_estimate(p.max(1), own_correct, seed=seed)}, "sets": {}}
    ood = options.get("ood") or {}
    scorer = _Scorer(net, spec, dev, own_manifest, options, seed) if ood.get("enabled") else None
    result["ood"] = scorer.meta if scorer else None
    for name, manifest in shift_manifests.items():
        rows, overlap = shift_rows(model, name, manifest, own_manifest, names, options["max_images"], seed)
        if not rows:
            result["sets"][name] = {"n": 0, "overlap_left_out": overlap, "note": "no image left to evaluate"}
            continue
        f = stream_features(net, rows, spec, dev, embeddings=bool(scorer and scorer.embeddings))
        probs = f["probs"]
        targets = np.array([names.index(r["label"]) for r in rows])
        correct = probs.argmax(1) == targets
        k, n = int(correct.sum()), len(rows)
        lo, hi = stats.gap_interval(k_in, n_in, k, n, 0.05)
        result["sets"][name] = {
            "n": n, "overlap_left_out": overlap, "accuracy": stats.proportion(k, n),
            "ece": ece_estimate(probs.max(1), correct, seed=seed),
            "gap": stats.estimate(k_in / n_in - k / n, n, lo, hi, method="newcombe",
                                  note="in-distribution minus shifted accuracy"),
            "classes": sorted({r["label"] for r in rows}, key=names.index),
            "description": (descriptions or {}).get(name, ""),
            "ood": scorer.separation(f) if scorer else None}
        log.info("%s: accuracy %.3f (in distribution %.3f) on %d images, %d seen in training left out", name, k / n,
                 k_in / n_in, n, overlap)
    result["seconds"] = round(time.time() - t0, 2)
    write_json(out, result)
    return result
