"""Selective prediction: how much better is the model where it may abstain on the images it is least sure of?
A model whose confidence ranks its own errors last gains accuracy as it abstains (Geifman & El-Yaniv 2017). The
risk-coverage curve gives, for each share of the test images kept (the most confident first, by the top class's
probability), the error rate among those kept; its area, AURC (Geifman et al. 2019), is the mean of those error
rates over every cut-off: the error rate itself for a confidence that says nothing, and the lowest the same errors
allow (all ranked last) for a perfect one. Images of equal confidence are kept or left out together, so the area
does not depend on their order. With AURC: its bootstrap interval over the test images, both bounds, and the
accuracy (Wilson interval) of the most confident COVERAGES of the images.
"""
from __future__ import annotations

import math

import numpy as np

from cvaudit.core import stats

COVERAGES = (0.9, 0.8)
CURVE_POINTS = 101  # the curve kept for the figure: at most this many cut-offs


def risks(confidence, wrong) -> tuple[np.ndarray, np.ndarray]:
    """The error rate among the k most confident images, for every k (..., n), each image of a run of equal
    confidences given the rate at its run's end; and how many images each cut-off keeps (n,). Works along the
    last axis of stacked resamples."""
    conf, wrong = np.asarray(confidence), np.asarray(wrong)
    order = np.argsort(-conf)  # the order within a run of equal confidences does not count: each takes the run's end
    c, w = np.take_along_axis(conf, order, -1), np.take_along_axis(wrong, order, -1)
    n = c.shape[-1]
    kept = np.arange(1, n + 1)
    risk = np.cumsum(w, -1) / kept
    last = np.ones(c.shape, bool)
    last[..., :-1] = c[..., :-1] != c[..., 1:]
    end = np.minimum.accumulate(np.where(last, kept - 1, n - 1)[..., ::-1], axis=-1)[..., ::-1]
    return np.take_along_axis(risk, end, -1), kept


def aurc(confidence, wrong, axis=-1) -> np.ndarray:
    """The area under the risk-coverage curve (scipy's vectorised statistic form: samples along the last axis)."""
    return risks(confidence, wrong)[0].mean(-1)


def optimal_aurc(errors: int, n: int) -> float:
    """The least AURC n images with this many errors allow: every error ranked below every correct image."""
    k = np.arange(1, n + 1)
    return float(np.mean(np.maximum(0, k - (n - errors)) / k))


def accuracy_at(confidence: np.ndarray, correct: np.ndarray, share: float) -> dict:
    """The accuracy of the ceil(share x n) most confident images (ties broken by image order), Wilson interval."""
    keep = math.ceil(share * len(correct) - 1e-9)
    order = np.argsort(-np.asarray(confidence), kind="stable")[:keep]
    return {"coverage": share, "kept": int(keep), "accuracy": stats.proportion(int(correct[order].sum()), keep)}


def selective(probs: np.ndarray, targets: np.ndarray, seed: int = 0) -> dict | None:
    """The calibrate stage's selective block for the test images (None without any)."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    if not len(targets):
        return None
    confidence, correct = probs.max(1), probs.argmax(1) == targets
    wrong = ~correct
    risk, kept = risks(confidence, wrong)
    pick = np.unique(np.linspace(0, len(kept) - 1, min(CURVE_POINTS, len(kept))).round().astype(int))
    return {"n": int(len(targets)), "errors": int(wrong.sum()),
            "aurc": stats.bootstrap(aurc, confidence, wrong, seed=seed),
            "aurc_optimal": optimal_aurc(int(wrong.sum()), len(targets)), "aurc_uninformed": float(wrong.mean()),
            "accuracy": float(correct.mean()), "at": [accuracy_at(confidence, correct, s) for s in COVERAGES],
            "curve": {"coverage": (kept[pick] / len(kept)).tolist(), "risk": risk[pick].tolist()}}
