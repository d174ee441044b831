"""Confident learning (cleanlab): which images' given labels a classifier's out-of-sample probabilities
contradict. The data audit runs it on a classic-ML classifier's cross-validated probabilities over every image;
the evaluation on the model's own test probabilities (the model never trained on the test split)."""
from __future__ import annotations

import numpy as np


def label_issues(probs: np.ndarray, y: np.ndarray) -> dict:
    """cleanlab's confident-learning candidates, most suspicious first: index, given and suggested label,
    the probability of the given label (self-confidence)."""
    from cleanlab.filter import find_label_issues
    idx = find_label_issues(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence")
    return {"index": np.asarray(idx, np.int64), "given": y[idx], "suggested": probs[idx].argmax(1),
            "self_confidence": probs[idx, y[idx]]}


def model_label_issues(probs: np.ndarray, targets: np.ndarray, min_per_class: int = 5) -> dict:
    """Confident learning on a model's own test probabilities (out of sample: it never trained on the test
    split), over the classes the test split has; None with the reason when a class has too few test images
    for cleanlab's per-class thresholds."""
    present, y = np.unique(targets, return_inverse=True)
    counts = np.bincount(y)
    if len(present) < 2 or counts.min() < min_per_class:
        why = ("the test split has one class" if len(present) < 2 else
               f"a class has {int(counts.min())} test image(s); confident learning needs at least {min_per_class} per class")
        return {"issues": None, "n": int(len(targets)), "why": why}
    p = probs[:, present].astype(np.float64)
    p /= p.sum(1, keepdims=True).clip(1e-12)
    found = label_issues(p, y)
    return {"issues": {"index": found["index"], "given": present[found["given"]],
                       "suggested": present[found["suggested"]], "self_confidence": found["self_confidence"]},
            "n": int(len(targets)), "why": ""}
