"""Conformal prediction sets: does the model know when it does not know? Split conformal prediction (Vovk et al.;
Angelopoulos & Bates's gentle introduction) turns the model's probabilities into a set of classes per image that
holds the true class with probability at least `level`, provided the test images are exchangeable with the
calibration images. MAPIE does the work (its SplitConformalClassifier on probabilities computed once): calibrated
on the validation split, the promise is checked on the test split, overall with its Wilson interval, per class and
per group of the dataset's metadata (conformal coverage holds on average, not for each class or group) and by set
size. A test coverage whose interval lies
below the promise means the test images are not like the validation images, or the split leaks.
"""
from __future__ import annotations

import math

import numpy as np

from cvaudit.core import stats

SCORES = ("lac", "aps", "raps")  # MAPIE's conformity scores: least ambiguous sets, adaptive sets, regularised APS


def min_calibration(level: float) -> int:
    """Calibration images MAPIE needs at `level`: more than 1 / (1 - level) and than 1 / level (beyond the finite
    quantile itself, ceil((n + 1) level) <= n)."""
    return math.floor(max(1 / level, 1 / (1 - level)) + 1e-9) + 1


def prediction_sets(val_probs: np.ndarray, val_targets: np.ndarray, test_probs: np.ndarray, level: float,
                    score: str, seed: int = 0) -> np.ndarray:
    """(test images, classes) booleans: each test image's conformal set, calibrated on the validation images. APS
    and RAPS draw a uniform number per image (MAPIE's randomised scores): seeded, so a rerun gives the same sets."""
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    probs = np.concatenate([val_probs, test_probs])

    class _Computed(ClassifierMixin, BaseEstimator):  # the probabilities already computed, looked up by row
        def predict_proba(self, rows):
            return probs[rows.ravel()]

    model = _Computed()
    model.classes_ = np.arange(probs.shape[1])  # fitted: MAPIE takes it as it is (prefit)
    rows = np.arange(len(probs)).reshape(-1, 1)
    mapie = SplitConformalClassifier(model, confidence_level=level, conformity_score=score, prefit=True,
                                     random_state=seed)
    mapie.conformalize(rows[:len(val_probs)], val_targets)
    return mapie.predict_set(rows[len(val_probs):])[1][:, :, 0]


def by_group(hit: np.ndarray, sizes: np.ndarray, values: np.ndarray) -> list[dict]:
    """Coverage (Wilson interval) and mean set size per value of one group column, the least covered first."""
    rows = [{"value": str(v), "n": int((values == v).sum()),
             "coverage": stats.proportion(int(hit[values == v].sum()), int((values == v).sum())),
             "mean_size": float(sizes[values == v].mean())} for v in np.unique(values)]
    return sorted(rows, key=lambda r: (r["coverage"]["value"], -r["n"]))


def coverage_report(sets: np.ndarray, targets: np.ndarray, class_names: list[str], level: float,
                    groups: dict[str, np.ndarray] | None = None) -> dict:
    """The promise checked on the test images: coverage (Wilson interval), set sizes, coverage per class and per
    value of each group column (the dataset's metadata)."""
    hit = sets[np.arange(len(targets)), targets]
    sizes = sets.sum(1)
    per_class = []
    for c, name in enumerate(class_names):
        mine = targets == c
        if mine.any():
            per_class.append({"class": str(name), "n": int(mine.sum()), "coverage": float(hit[mine].mean()),
                              "mean_size": float(sizes[mine].mean())})
    worst = min(per_class, key=lambda r: (r["coverage"], -r["n"]))  # the least covered; of those, the largest
    return {"level": level, "n": int(len(targets)), "coverage": stats.proportion(int(hit.sum()), len(hit)),
            "mean_size": float(sizes.mean()), "empty": int((sizes == 0).sum()), "singletons": int((sizes == 1).sum()),
            "size_counts": np.bincount(sizes, minlength=sets.shape[1] + 1).tolist(), "per_class": per_class,
            "worst_class": worst, "per_group": {g: by_group(hit, sizes, np.asarray(v)) for g, v in (groups or {}).items()}}


EXAMPLES = 3  # test images shown per kind: the largest sets, the misses, confident singletons


def examples(sets: np.ndarray, probs: np.ndarray, targets: np.ndarray, paths: list[str], class_names: list[str]) -> list:
    """Test images with their sets, for a reader to see what a set means: the largest sets (the least confident
    first), the images whose set misses the true class, and singletons that hold it."""
    sizes, hit = sets.sum(1), sets[np.arange(len(targets)), targets]
    top = probs.max(1)
    picks = [("largest", np.lexsort((top, -sizes))), ("missed", np.nonzero(~hit)[0][np.argsort(-top[~hit], kind="stable")]),
             ("singleton", np.nonzero(hit & (sizes == 1))[0][np.argsort(-top[hit & (sizes == 1)], kind="stable")])]
    out, seen = [], set()
    for kind, order in picks:
        for i in [int(j) for j in order if int(j) not in seen][:EXAMPLES]:
            seen.add(i)
            out.append({"kind": kind, "path": str(paths[i]), "true": str(class_names[targets[i]]),
                        "set": [str(class_names[c]) for c in np.nonzero(sets[i])[0]], "covered": bool(hit[i])})
    return out


def conformal(val_probs: np.ndarray, val_targets: np.ndarray, test_probs: np.ndarray, test_targets: np.ndarray,
              class_names: list[str], options: dict, paths: list[str] | None = None,
              groups: dict[str, np.ndarray] | None = None, seed: int = 0) -> dict:
    """The calibrate stage's conformal block: the report above, or why there is none (too few validation images
    to calibrate on, or no test image to check the promise on); with the test images' paths, examples of sets."""
    level, score = float(options["level"]), options["score"]
    need = min_calibration(level)
    out = {"level": level, "score": score, "n_calibration": int(len(val_targets)), "reason": ""}
    if len(val_targets) < need or not len(test_targets):
        out["reason"] = (f"the validation split has {len(val_targets)} images; a {level:.0%} promise needs at least "
                         f"{need} to calibrate on (lower robustness.calibration.conformal.level or add images)"
                         if len(val_targets) < need else "the test split has no images")
        return out
    sets = prediction_sets(val_probs, np.asarray(val_targets, int), test_probs, level, score, seed)
    targets = np.asarray(test_targets, int)
    return {**out, **coverage_report(sets, targets, class_names, level, groups),
            "examples": examples(sets, np.asarray(test_probs), targets, paths, class_names) if paths is not None else []}
