"""Out-of-distribution detection: can the model tell the images it was built for from a shifted set? Each image gets
three scores, higher meaning more like the training distribution:

- `msp`: the top class's probability (Hendrycks & Gimpel 2017);
- `energy`: the log-sum-exp of the logits, the negative free energy (Liu et al. 2020);
- `knn`: minus the distance from the image's normalised penultimate embedding to its k-th nearest training image's
  (Sun et al. 2022); not for an export, which shows no embedding.

Each is judged on the model's own test images (in distribution) against the shifted set's: AUROC (0.5: the score
cannot tell them apart, 1: every in-distribution image scores higher) and the FPR at 95% TPR (the share of shifted
images scored at or above the score that keeps 95% of the in-distribution images; lower is better), each with a
percentile bootstrap interval that resamples both sets (seeded). A model that cannot tell a shifted set from its own
keeps answering there as confidently as at home.
"""
from __future__ import annotations

import numpy as np

from cvaudit.core import stats

SCORES = {"msp": "maximum softmax probability", "energy": "energy (log-sum-exp of the logits)",
          "knn": "k-NN distance in the embedding"}
CHUNK = 250  # bootstrap resamples ranked at a time


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def image_scores(logits: np.ndarray, embeddings: np.ndarray | None, reference: np.ndarray | None,
                 k: int) -> dict[str, np.ndarray]:
    """The scores of each image (rows of logits and embeddings); knn against the reference embeddings (training
    images), the k-th nearest (k capped at the reference's size); without embeddings, msp and energy alone."""
    from scipy.special import logsumexp, softmax
    logits = np.asarray(logits)
    out = {"msp": softmax(logits, 1).max(1), "energy": logsumexp(logits, 1)}
    if embeddings is not None and reference is not None and len(reference):
        from sklearn.neighbors import NearestNeighbors
        kk = min(k, len(reference))
        dist, _ = NearestNeighbors(n_neighbors=kk).fit(normalised(reference)).kneighbors(normalised(embeddings))
        out["knn"] = -dist[:, kk - 1]
    return out


def auroc(inside: np.ndarray, outside: np.ndarray, axis: int = -1) -> np.ndarray:
    """The chance that an in-distribution image scores above a shifted one (ties count half): the Mann-Whitney U
    over both sets' sizes, along the last axis of stacked resamples."""
    from scipy.stats import rankdata
    inside, outside = np.asarray(inside), np.asarray(outside)
    n_in, n_out = inside.shape[-1], outside.shape[-1]
    ranks = rankdata(np.concatenate([inside, outside], -1), axis=-1)[..., :n_in]
    return (ranks.sum(-1) - n_in * (n_in + 1) / 2) / (n_in * n_out)


def fpr_at_95(inside: np.ndarray, outside: np.ndarray, axis: int = -1) -> np.ndarray:
    """The share of shifted images scored at or above the threshold that keeps 95% of the in-distribution images
    (the largest score with at least 95% of them at or above it)."""
    inside, outside = np.asarray(inside), np.asarray(outside)
    n_in = inside.shape[-1]
    at = int(np.floor(0.05 * n_in + 1e-9))  # this many in-distribution images may fall below the threshold
    threshold = np.sort(inside, -1)[..., at]
    return (outside >= threshold[..., None]).mean(-1)


def separation(inside: dict[str, np.ndarray], outside: dict[str, np.ndarray], seed: int = 0) -> dict:
    """For each score both sets have: AUROC and FPR at 95% TPR with their intervals; the best score by AUROC."""
    out = {"n_in": int(len(next(iter(inside.values())))), "n_out": int(len(next(iter(outside.values())))), "scores": {}}
    for name in SCORES:
        if name in inside and name in outside:
            out["scores"][name] = {
                stat: stats.two_sample_bootstrap(fn, inside[name], outside[name], seed=seed, batch=CHUNK)
                for stat, fn in (("auroc", auroc), ("fpr95", fpr_at_95))}
    out["best"] = max(out["scores"], key=lambda s: out["scores"][s]["auroc"]["value"]) if out["scores"] else None
    return out
