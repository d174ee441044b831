"""The slices stage: where the model fails, over the whole test split.

- Per image property (cvaudit.data.image_properties) in quantile bins: accuracy (Wilson interval) and mean
  confidence per bin.
- Weak slices, in the spirit of Deepchecks' weak-segments check: every bin, and every pair of bins of two
  properties, holding at least `min_size` images is tested against the rest of the test set (Fisher's
  exact test, one-sided: more errors inside) and the p-values are corrected for the number of slices
  tested (Holm; statsmodels). A weak slice is one that survives the correction.
- Groups from the dataset's metadata (config key datasets.*.groups): accuracy, ECE and confusion per
  group with fairlearn's MetricFrame, and the worst-group gap (best minus worst accuracy among groups of
  at least `min_group` images) with a Newcombe interval, Bonferroni-adjusted over the group pairs.
- Failure slices nobody defined (cvaudit.robust.error_slices): clusters of the model's embedding of the test images
  (the represent stage's) that err more than their images' classes predict.
The slice_gap and group_gap verdicts read this stage's output (cvaudit.report.behaviour_checks).
"""
from __future__ import annotations

import itertools
import logging
import time

import numpy as np

from cvaudit import CvauditError
from cvaudit.core import stats
from cvaudit.core.files import write_json
from cvaudit.core.manifest import group_values
from cvaudit.data.image_properties import CATEGORICAL, PROPERTIES, read_properties

log = logging.getLogger("cvaudit.robust.slices")


def bin_values(values: np.ndarray, bins: int, categorical: bool = False) -> tuple[np.ndarray, list[dict]] | None:
    """(bin index per image, [{name, lo, hi}]) with quantile edges; None when the property is constant
    (fewer than two bins after merging tied quantiles)."""
    v = np.asarray(values, float)
    if categorical:
        levels = np.unique(v)
        if len(levels) < 2:
            return None
        return np.searchsorted(levels, v), [{"name": f"{lv:g}", "lo": float(lv), "hi": float(lv)} for lv in levels]
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return None
    which = np.clip(np.searchsorted(edges[1:-1], v, side="right"), 0, len(edges) - 2)
    present = np.unique(which)
    if len(present) < 2:
        return None
    remap = np.full(len(edges) - 1, -1)
    remap[present] = np.arange(len(present))
    names = []
    for k, b in enumerate(present):
        lo, hi = edges[b], edges[b + 1]
        where = "lowest" if k == 0 else "highest" if k == len(present) - 1 else ""
        names.append({"name": f"{lo:.3g}-{hi:.3g}" + (f" ({where})" if where else ""), "lo": float(lo), "hi": float(hi)})
    return remap[which], names


def _fisher_less_accurate(k_in: int, n_in: int, k_out: int, n_out: int) -> float:
    """One-sided p-value that the slice (k_in correct of n_in) is less accurate than the rest."""
    from scipy.stats import fisher_exact
    table = [[n_in - k_in, k_in], [n_out - k_out, k_out]]  # errors, correct
    return float(fisher_exact(table, alternative="greater").pvalue)


def weak_slices(correct: np.ndarray, binned: dict[str, tuple[np.ndarray, list[dict]]], min_size: int, alpha: float,
                pairs: bool = True) -> dict:
    """Every bin and pair of bins of two properties with at least min_size images, tested against the
    rest (Fisher, Holm-corrected); the slices sorted by adjusted p-value, and the worst gap as an estimate
    (the slice whose shortfall has the largest Bonferroni-adjusted lower bound)."""
    from statsmodels.stats.multitest import multipletests
    correct = np.asarray(correct, bool)
    n, k = len(correct), int(correct.sum())
    cands = [((p, b),) for p, (idx, names) in binned.items() for b in range(len(names))]
    if pairs:
        cands += [((p, a), (q, b)) for p, q in itertools.combinations(binned, 2)
                  for a in range(len(binned[p][1])) for b in range(len(binned[q][1]))]
    tested = []
    for where in cands:
        mask = np.logical_and.reduce([binned[p][0] == b for p, b in where])
        n_in = int(mask.sum())
        if n_in < min_size or n_in == n:
            continue
        k_in = int(correct[mask].sum())
        tested.append({"where": [{"property": p, "bin": binned[p][1][b]["name"]} for p, b in where],
                       "n": n_in, "correct": k_in, "accuracy": stats.proportion(k_in, n_in),
                       "rest_accuracy": (k - k_in) / (n - n_in), "gap": (k - k_in) / (n - n_in) - k_in / n_in,
                       "p": _fisher_less_accurate(k_in, n_in, k - k_in, n - n_in)})
    out = {"n_candidates": len(cands), "n_tested": len(tested), "alpha": alpha, "min_size": min_size,
           "slices": [], "weak": 0, "worst": None}
    if not tested:
        out["note"] = f"no slice holds at least {min_size} images (robustness.slices.min_size) and less than the whole set"
        return out
    reject, p_adj, _, _ = multipletests([t["p"] for t in tested], alpha=alpha, method="holm")
    level = alpha / len(tested)  # Bonferroni: each slice's interval at 1 - alpha / m
    best = None
    for t, rej, pa in zip(tested, reject, p_adj):
        t["p_adjusted"] = float(pa)
        t["weak"] = bool(rej) and t["gap"] > 0
        n_in, k_in = t["n"], t["correct"]
        lo, hi = stats.gap_interval(k - k_in, n - n_in, k_in, n_in, level)
        t["gap_ci"] = [lo, hi]
        if best is None or lo > best["gap_ci"][0]:
            best = t
    out["slices"] = sorted(tested, key=lambda t: (t["p_adjusted"], -t["gap"]))
    out["weak"] = sum(t["weak"] for t in tested)
    out["worst"] = {**stats.estimate(best["gap"], best["n"], *best["gap_ci"], method="newcombe",
                                     note=f"Bonferroni over {len(tested)} slices; rest minus slice accuracy"),
                    "where": best["where"]}
    return out


def _confusion(y, pred, labels):
    from sklearn.metrics import confusion_matrix
    return confusion_matrix(y, pred, labels=labels).tolist()


def group_metrics(values: np.ndarray, probs: np.ndarray, targets: np.ndarray, min_group: int, alpha: float,
                  bins: int = 15, seed: int = 0) -> dict:
    """Accuracy (Wilson), ECE (15 bins, as the calibrate stage), mean confidence and confusion per group
    (fairlearn MetricFrame), and the worst-group gap with a Newcombe interval, Bonferroni over the pairs."""
    from fairlearn.metrics import MetricFrame, count
    from sklearn.metrics import accuracy_score

    from cvaudit.robust.calibrate import calibration_metrics

    probs = np.asarray(probs, np.float64)
    pred, conf = probs.argmax(1), probs.max(1)
    labels = sorted(set(targets.tolist()) | set(pred.tolist()))
    index = np.arange(len(targets))

    def ece(y_true, y_pred, rows):
        return calibration_metrics(probs[rows], targets[rows], bins)["ece"]

    def confidence(y_true, y_pred, rows):
        return float(conf[rows].mean())

    mf = MetricFrame(metrics={"accuracy": accuracy_score, "count": count, "ece": ece, "confidence": confidence,
                              "confusion": lambda a, b: _confusion(a, b, labels)},
                     y_true=targets, y_pred=pred, sensitive_features=np.asarray(values, dtype=object),
                     sample_params={"ece": {"rows": index}, "confidence": {"rows": index}})
    table = mf.by_group
    groups = []
    for value, row in table.iterrows():
        n_g = int(row["count"])
        k_g = int(round(float(row["accuracy"]) * n_g))
        groups.append({"value": str(value), "n": n_g, "accuracy": stats.proportion(k_g, n_g),
                       "ece": float(row["ece"]), "confidence": float(row["confidence"]), "confusion": row["confusion"],
                       "in_gap": n_g >= min_group})
    big = [g for g in groups if g["in_gap"]]
    out = {"groups": groups, "labels": [int(v) for v in labels], "min_group": min_group, "gap": None}
    if len(big) < 2:
        out["note"] = f"fewer than two groups of at least {min_group} test images (robustness.slices.min_group)"
        return out
    best = max(big, key=lambda g: g["accuracy"]["value"])
    worst = min(big, key=lambda g: g["accuracy"]["value"])
    m = len(big) * (len(big) - 1) // 2
    k_b, k_w = round(best["accuracy"]["value"] * best["n"]), round(worst["accuracy"]["value"] * worst["n"])
    lo, hi = stats.gap_interval(k_b, best["n"], k_w, worst["n"], alpha / m)
    out["gap"] = {**stats.estimate(best["accuracy"]["value"] - worst["accuracy"]["value"], best["n"] + worst["n"],
                                   lo, hi, method="newcombe", note=f"Bonferroni over {m} group pair(s)"),
                  "best": best["value"], "worst": worst["value"]}
    return out


def _error_clusters(embeddings, p, targets, paths, class_names, options, seed, properties, result, manifest,
                    groups) -> dict:
    from cvaudit.core.files import load_npz
    from cvaudit.robust.error_slices import error_slices
    emb = load_npz(embeddings, keys=("embeddings", "paths", "train_embeddings", "train_paths"))
    at = {str(path): i for i, path in enumerate(emb["paths"])}
    if any(path not in at for path in paths):
        raise CvauditError(f"{embeddings} embeds other test images than the evaluation's (the represent stage ran on "
                           "an older manifest): rebuild it with snakemake --forcerun represent")
    rows = np.array([at[path] for path in paths], dtype=int)
    found = error_slices(emb["embeddings"][rows], targets, p.argmax(1), paths, class_names, options, seed=seed,
                         properties={k: v for k, v in properties.items() if not result["properties"][k]["constant"]},
                         groups=group_values(manifest, paths, groups), train=(emb["train_embeddings"], [str(q) for q in emb["train_paths"]])
                         if "train_embeddings" in emb else None)
    log.info("error clusters: %d flagged of %s tested", found["flagged"], found.get("n_tested", 0))
    return found


def run_slices(properties, probs, manifest, options: dict, groups: list[str], out, seed: int = 0,
               embeddings=None) -> dict:
    """slices.json: property bins with accuracy, the weak slices, per declared group column its metrics and gap,
    and the error clusters of the embedding (embeddings: the represent stage's npz; None: not searched).
    probs: the evaluate stage's probs.npz (test images, the model's class indices)."""
    t0 = time.time()
    props = read_properties(properties)
    with np.load(probs, allow_pickle=False) as z:
        p, targets, paths = z["probs"], z["targets"], [str(s) for s in z["paths"]]
    row_of = {path: i for i, path in enumerate(props["path"])}
    missing = [path for path in paths if path not in row_of]
    if missing:
        raise CvauditError(f"{len(missing)} test image(s) have no properties (e.g. {missing[0]}): the properties file "
                           f"{properties} is from another manifest; rebuild it with snakemake --forcerun image_properties")
    take = np.array([row_of[path] for path in paths], dtype=int)
    correct = p.argmax(1) == targets
    conf = p.max(1)
    result = {"n": int(len(paths)), "accuracy": stats.proportion(int(correct.sum()), len(paths)),
              "properties": {}, "descriptions": PROPERTIES, "options": options}
    binned = {}
    for name in PROPERTIES:
        b = bin_values(props[name][take], options["bins"], name in CATEGORICAL)
        if b is None:
            result["properties"][name] = {"constant": True, "value": float(props[name][take][0]) if len(take) else None}
            continue
        idx, names = b
        binned[name] = b
        result["properties"][name] = {"constant": False, "bins": [
            {**nm, "n": int((idx == j).sum()), "accuracy": stats.proportion(int(correct[idx == j].sum()), int((idx == j).sum())),
             "confidence": float(conf[idx == j].mean())} for j, nm in enumerate(names)]}
    result["weak_slices"] = weak_slices(correct, binned, options["min_size"], options["alpha"], options["pairs"])
    result["groups"] = {}
    for g, values in group_values(manifest, paths, groups).items():
        result["groups"][g] = group_metrics(values, p, targets, options["min_group"], options["alpha"], seed=seed)
    result["error_clusters"] = None
    if embeddings is not None and options["error_clusters"]:
        with np.load(probs, allow_pickle=False) as z:
            class_names = [str(c) for c in z["class_names"]]
        result["error_clusters"] = _error_clusters(embeddings, p, targets, paths, class_names, options, seed,
                                                   {k: props[k][take] for k in PROPERTIES}, result, manifest, groups)
    result["seconds"] = round(time.time() - t0, 2)
    write_json(out, result)
    log.info("slices: %d weak of %d tested; groups %s (%.1fs)", result["weak_slices"]["weak"],
             result["weak_slices"]["n_tested"], list(result["groups"]), result["seconds"])
    return result
