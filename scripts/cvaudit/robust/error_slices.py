"""Failure slices nobody defined: where in its own embedding does the model fail more than it should?

Slices by brightness or a metadata column find only what someone thought to measure. Errors also cluster in the
model's embedding: a pose, a background, a sub-type of a class, a capture device. So the test images' penultimate
embeddings (the represent stage's; centred, normalised, reduced to at most DIMS principal components) are grouped by
k-means (seeded; `error_clusters` clusters, fewer where the test split holds fewer than `min_size` images per
cluster), every image in, the correct ones as the reference the errors are measured against. A cluster is a
failure slice when its errors exceed what its images' classes predict, both by their true class and by the class the
model gave them: each image is expected to err at its class's rate outside the cluster, and the cluster's errors are
tested against that sum of binomials (one-sided, exact; the larger of the two p-values, so both must hold), the
p-values Holm-corrected over the clusters tested. Conditioning on the class matters: a cluster of one hard class
(shirts among garments) fails often, but no more than that class does elsewhere, which the per-class accuracy already
says. Conditioning on the prediction too matters because the embedding is the model's own: an image it gets wrong
sits among the images of the class it gave, so a cluster of one class's correct images with a few others' mistakes
in it is the confusion matrix again, not a slice; a sub-population the model fails on errs more than both predict.

Each cluster is described by what it has in common: its classes, its most frequent mistakes (true -> predicted), the
image properties where it differs most from the test split (in robust standard deviations: median difference over
the MAD), the metadata groups it is made of, its images (mistakes first), and the training images nearest its centre
(from the represent stage's sample of training images).
"""
from __future__ import annotations

import numpy as np

from cvaudit.core import stats

DIMS = 32  # principal components kept for the clustering
SHOWN = 8  # images listed per cluster
NEAREST = 4  # training images listed per cluster: those nearest its centre


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cluster_embeddings(embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster index per image: k-means (k-means++, 4 seeded starts) on the centred, normalised embeddings reduced to
    at most DIMS principal components."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    x = np.asarray(embeddings, np.float64)
    x = normalised(x - x.mean(0))
    dims = min(DIMS, x.shape[1], len(x) - 1)
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)


def excess_errors_p(inside: np.ndarray, wrong: np.ndarray, strata: np.ndarray) -> tuple[float, float]:
    """One-sided p-value that the images `inside` err more than the rest of their strata (classes, true or
    predicted) predict, and the errors predicted. Under the null each image inside errs independently at its
    stratum's rate outside the cluster ((errors + 1/2) / (images + 1), so a stratum without an error outside still
    allows one); the errors inside then follow a sum of binomials, whose upper tail at the observed count is the
    p-value (exact: the binomials' distributions convolved)."""
    from scipy.stats import binom
    pmf, expected = np.ones(1), 0.0
    for c in np.unique(strata[inside]):
        n_in, rest = int((inside & (strata == c)).sum()), ~inside & (strata == c)
        rate = (wrong[rest].sum() + 0.5) / (rest.sum() + 1)
        expected += n_in * rate
        pmf = np.convolve(pmf, binom.pmf(np.arange(n_in + 1), n_in, rate))
    observed = int(wrong[inside].sum())
    return float(min(1.0, pmf[observed:].sum())), float(expected)


def describe(members: np.ndarray, wrong: np.ndarray, targets: np.ndarray, preds: np.ndarray, class_names: list[str],
             properties: dict[str, np.ndarray] | None, groups: dict[str, np.ndarray] | None) -> dict:
    """What the cluster's images have in common: classes, mistakes, the properties that set it apart, groups."""
    def top(values, k=3):
        v, n = np.unique(values, return_counts=True)
        order = np.argsort(-n, kind="stable")[:k]
        return [{"value": str(v[i]), "n": int(n[i])} for i in order]

    out = {"classes": top([class_names[t] for t in targets[members]]),
           "mistakes": top([f"{class_names[t]} -> {class_names[p]}" for t, p in
                            zip(targets[members & wrong], preds[members & wrong])]), "properties": [], "groups": {}}
    for name, v in (properties or {}).items():
        mad = float(np.median(np.abs(v - np.median(v)))) * 1.4826
        if mad > 0:
            shift = float((np.median(v[members]) - np.median(v)) / mad)
            out["properties"].append({"property": name, "shift": shift})
    out["properties"] = sorted(out["properties"], key=lambda r: -abs(r["shift"]))[:3]
    for name, v in (groups or {}).items():
        out["groups"][name] = top(v[members])
    return out


def nearest_training(embeddings: np.ndarray, members: np.ndarray, train: np.ndarray, k: int = NEAREST) -> np.ndarray:
    """The k training images nearest the cluster's centre (cosine, embeddings centred on the test split's mean):
    what the model learnt from that looks like the cluster."""
    mean = embeddings.mean(0)
    centre = (normalised(embeddings[members] - mean)).mean(0)
    return np.argsort(-(normalised(train - mean) @ centre), kind="stable")[:k]


def error_slices(embeddings: np.ndarray, targets: np.ndarray, preds: np.ndarray, paths: list[str],
                 class_names: list[str], options: dict, seed: int = 0, properties: dict | None = None,
                 groups: dict | None = None, train: tuple[np.ndarray, list[str]] | None = None) -> dict:
    """The slices stage's error-cluster block: every cluster of at least min_size images tested (flagged where the
    Holm-corrected p is below alpha and the cluster errs more than its classes predict), sorted by adjusted p;
    train: (embeddings, paths) of training images, whose nearest to each cluster are listed."""
    from statsmodels.stats.multitest import multipletests
    targets, preds = np.asarray(targets, int), np.asarray(preds, int)
    wrong = preds != targets
    n, min_size, alpha = len(targets), options["min_size"], options["alpha"]
    k = min(options["error_clusters"], n // min_size)
    out = {"n": int(n), "errors": int(wrong.sum()), "k": int(k), "min_size": min_size, "alpha": alpha,
           "clusters": [], "flagged": 0}
    if k < 2 or not wrong.any():
        out["note"] = (f"{n} test images hold fewer than two clusters of {min_size} (robustness.slices.min_size)"
                       if k < 2 else "the model makes no mistake on the test split")
        return out
    label = cluster_embeddings(embeddings, k, seed)
    tested = []
    for c in range(k):
        members = label == c
        size = int(members.sum())
        if size < min_size:
            continue
        p_true, expected = excess_errors_p(members, wrong, targets)
        p_pred, _ = excess_errors_p(members, wrong, preds)
        p = max(p_true, p_pred)
        errs = int(wrong[members].sum())
        order = np.argsort(~wrong[members], kind="stable")[:SHOWN]  # mistakes first
        tested.append({"cluster": c, "n": size, "errors": errs, "accuracy": stats.proportion(size - errs, size),
                       "expected_accuracy": 1 - expected / size, "p": p,
                       "images": [{"path": paths[i], "true": class_names[targets[i]], "pred": class_names[preds[i]]}
                                  for i in np.nonzero(members)[0][order]],
                       "nearest_training": [] if train is None or not len(train[0]) else [
                           str(train[1][j]) for j in nearest_training(embeddings, members, train[0])],
                       **describe(members, wrong, targets, preds, class_names, properties, groups)})
    # k <= n // min_size clusters of n images: the largest holds at least min_size, so one is always tested
    reject, p_adj, _, _ = multipletests([t["p"] for t in tested], alpha=alpha, method="holm")
    for t, rej, pa in zip(tested, reject, p_adj):
        t["p_adjusted"] = float(pa)
        t["flagged"] = bool(rej) and t["accuracy"]["value"] < t["expected_accuracy"]
    out["clusters"] = sorted(tested, key=lambda t: (t["p_adjusted"], t["accuracy"]["value"]))
    out["flagged"] = sum(t["flagged"] for t in tested)
    out["n_tested"] = len(tested)
    return out
