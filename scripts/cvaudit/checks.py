"""Audit verdicts. Each check carries its own name, category and direction (as in Quantus), so the
report renders any of them without special cases; thresholds come from config key `verdicts`.
A check is either about the model (one verdict) or about each attribution method (one per method)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import stats

# pass and n/a never count; inconclusive (the interval straddles a threshold) sits between pass and warn,
# so audit.fail_on: inconclusive is the strictest gate.
STATUS_ORDER = {"pass": 0, "n/a": 0, "inconclusive": 1, "warn": 2, "fail": 3}


@dataclass(frozen=True)
class Check:
    name: str
    label: str
    category: str
    higher_is_better: bool
    description: str
    value: Callable  # model checks: value(results); method checks: value(results, method). An estimate (stats), a number or None
    per_method: bool = False


CHECKS: dict[str, Check] = {}


def register(check: Check) -> Check:
    CHECKS[check.name] = check
    return check


def _per_image_gap(explain: dict):
    """Per audit image: insertion AUC - deletion AUC, with the mask of images whose map may be scored
    (an integrated-gradients map that did not converge is left out)."""
    if "faith_insertion_auc" not in explain:
        return None, None
    gap = np.asarray(explain["faith_insertion_auc"], float) - np.asarray(explain["faith_deletion_auc"], float)
    ok = np.asarray(explain["converged"], bool) if "converged" in explain else np.ones(len(gap), bool)
    return gap, ok


def faithfulness_gain(results: dict, method: str):
    """Mean over audit images of the method's (insertion - deletion) AUC minus the random map's on the
    same image, with a paired bootstrap interval."""
    mine, ok = _per_image_gap(results["explain"][method])
    floor, _ = _per_image_gap(results["explain"].get("random", {}))
    if mine is None or floor is None or len(mine) != len(floor):
        return None
    est = stats.paired_difference(mine[ok], floor[ok], seed=results.get("seed", 0))
    if not ok.all():
        est["note"] = (est["note"] + "; " if est["note"] else "") + f"{int((~ok).sum())} unconverged map(s) left out"
    return est


def sanity_similarity(results: dict, method: str):
    san = results["explain"][method]["meta"].get("sanity")
    if not san:
        return None
    per = np.asarray(san["stages"][-1]["per_image"], float)
    if "converged" in san:
        per = per[np.asarray(san["converged"], bool)]
    return stats.mean(per, seed=results.get("seed", 0))


def road_gain(results: dict, method: str):
    """Mean over audit images of the method's ROAD score minus the random map's on the same image."""
    mine, floor = results["explain"][method].get("road"), results["explain"].get("random", {}).get("road")
    if mine is None or floor is None or len(mine) != len(floor):
        return None
    _, ok = _per_image_gap(results["explain"][method])
    ok = np.ones(len(mine), bool) if ok is None else ok
    return stats.paired_difference(np.asarray(mine, float)[ok], np.asarray(floor, float)[ok], seed=results.get("seed", 0))


def class_sensitivity(results: dict, method: str):
    rl = results["explain"][method]["meta"].get("random_logit")
    if not rl:
        return None
    return stats.mean(np.asarray(rl["per_image"], float), seed=results.get("seed", 0))


def accuracy(results: dict):
    ev = results["eval"]
    return ev.get("accuracy_ci") or stats.proportion(round(ev["accuracy"] * ev["n_test"]), ev["n_test"])


register(Check("accuracy", "Test accuracy", "performance", True,
               "Share of test images whose top prediction is the true class (Wilson 95% interval).", accuracy))
register(Check("gain_over_baseline", "Gain over classic ML baseline", "baselines", True,
               "Test accuracy minus that of logistic regression on downsampled pixels, on the same test images "
               "(paired bootstrap interval; McNemar's test in the evaluation section): what the network buys.",
               lambda r: r["eval"].get("gain_over_baseline_ci") or r["eval"].get("gain_over_baseline")))
register(Check("faithfulness_gain", "Faithfulness beyond a random map", "attribution faithfulness", True,
               "(insertion AUC - deletion AUC) of the method minus that of a random map on the same audit images "
               "(paired bootstrap interval): how much better its ranking of pixels predicts what the model needs.",
               faithfulness_gain, per_method=True))
register(Check("sanity_similarity", "Similarity after model randomisation", "attribution sanity", False,
               "Rank correlation between the maps of the trained model and of the same model with every layer "
               "re-initialised (Adebayo et al.); a map that barely changes does not explain the model.",
               sanity_similarity, per_method=True))
register(Check("road_gain", "ROAD beyond a random map", "attribution faithfulness", True,
               "ROAD score (Rong et al. 2022: the most and the least relevant pixels removed and filled by noisy linear "
               "imputation, so the mask leaks no shape) of the method minus that of a random map on the same audit images "
               "(paired bootstrap interval).", road_gain, per_method=True))
register(Check("class_sensitivity", "Similarity to another class's map", "attribution sanity", False,
               "Rank correlation between the map for the explained class and the map for a random other class of the "
               "same image (the random-logit test, Sixt et al. 2020); a map that barely changes shows the image, not "
               "the evidence for a class.", class_sensitivity, per_method=True))


def _robust(r: dict) -> dict:
    return r.get("robust") or {}


def rotation_accuracy(r: dict):
    """Mean test accuracy at +-check_angle degrees (whichever of the two were run), with a Wilson interval
    over the images (conservative: the two rotations of one image are not independent)."""
    rob = _robust(r)
    inv = rob.get("invariance", {}).get("rotate")
    if not inv:
        return None
    accs = [a for s, a in zip(inv["severities"], inv["accuracy"]) if abs(abs(s) - rob["check_angle"]) < 1e-9]
    if not accs:
        return None
    n = inv["n"]
    est = stats.proportion(round(sum(accs) / len(accs) * n), n)
    est["value"] = sum(accs) / len(accs)
    return est


def robust_accuracy(r: dict):
    """Per-image worst case over every attack run at check_epsilon: an image counts as robust only if no
    attack changed its prediction away from the true class (Wilson interval)."""
    rob = _robust(r)
    arrays = rob.get("adversarial_arrays") or {}
    eps = rob.get("check_epsilon")
    robust, names = None, []
    for attack, a in arrays.items():
        if "preds" not in a:
            continue
        k = [i for i, e in enumerate(a["meta"]["epsilons"]) if abs(e - eps) < 1e-9]
        if not k:
            continue
        ok = np.asarray(a["preds"][k[0]]) == np.asarray(a["targets"])
        robust = ok if robust is None else robust & ok
        names.append(attack)
    if robust is None:
        return None
    est = stats.proportion(int(robust.sum()), len(robust))
    est["note"] = "worst case over " + ", ".join(names)
    return est


def ece(r: dict):
    cal = _robust(r).get("calibration") or {}
    before = cal.get("before")
    if not before:
        return None
    return before.get("ece_ci") or before["ece"]


register(Check("ece", "Expected calibration error", "calibration", False,
               "Average gap between confidence and accuracy over confidence bins on the test set (before "
               "temperature scaling; bootstrap interval over images): how far the model's probabilities can be "
               "taken at face value.", ece))
register(Check("rotation_accuracy", "Accuracy under rotation", "invariance", True,
               "Test accuracy with every image rotated by the configured angle (robustness.check_angle).",
               rotation_accuracy))
register(Check("robust_accuracy", "Accuracy under the strongest attack", "adversarial", True,
               "Test accuracy against the per-image worst case of every attack run (AutoAttack-style ensemble: "
               "APGD-CE, APGD-T on the DLR loss, Square; plus FGSM and PGD) at robustness.adversarial.check_epsilon.",
               robust_accuracy))


def slice_gap(r: dict):
    """The slices stage's worst slice: rest-of-test-set accuracy minus the slice's, for the slice whose
    shortfall has the largest Bonferroni-adjusted lower bound (Newcombe interval)."""
    sl = _robust(r).get("slices")
    return (sl or {}).get("weak_slices", {}).get("worst")


def group_gap(r: dict):
    """Best minus worst group accuracy (the dataset's groups columns); with several columns, the largest."""
    sl = _robust(r).get("slices") or {}
    gaps = [g["gap"] for g in sl.get("groups", {}).values() if g.get("gap")]
    return max(gaps, key=lambda g: g["value"]) if gaps else None


def shift_gap(r: dict):
    sh = _robust(r).get("shift")
    gaps = [s["gap"] for s in (sh or {}).get("sets", {}).values() if s.get("gap")]
    return max(gaps, key=lambda g: g["value"]) if gaps else None


register(Check("shift_gap", "Accuracy lost on a shifted test set", "shifted test sets", False,
               "In-distribution test accuracy minus accuracy on the shifted test set the model does worst on "
               "(models.*.shift_sets), with a Newcombe interval.", shift_gap))


def mce(r: dict):
    co = _robust(r).get("corruptions")
    return co["errors"]["mce"] if co else None


register(Check("mce", "Mean corruption error (mCE)", "corruptions", False,
               "Errors under the 15 common corruptions of Hendrycks & Dietterich (5 severities each) relative to the "
               "reference model's on the same images, averaged over corruptions; above 1: less robust than the "
               "reference (paired bootstrap interval).", mce))


def shape_bias(r: dict):
    st = _robust(r).get("shape_texture")
    return st["meta"]["cue_conflict"]["shape_bias"] if st else None


register(Check("shape_bias", "Shape bias", "shape and texture", True,
               "Share of shape decisions among the shape-or-texture decisions on cue-conflict images (the figure of "
               "one test image filled with the texture of another class's; Geirhos et al. 2019), Wilson interval.",
               shape_bias))
def leakage(r: dict):
    """The data audit's leaked share: test images with a near duplicate in the training or validation split."""
    audit = r.get("data_audit")
    return audit["meta"]["duplicates"]["leaked_share"] if audit else None


register(Check("leakage", "Test images leaked from training", "data", False,
               "Share of the test split with a near duplicate (pHash and pixels) in the training or validation split: "
               "those images were seen in training, so every metric on them is inflated (Wilson interval).", leakage))
register(Check("slice_gap", "Accuracy gap of the weakest slice", "slices and groups", False,
               "Accuracy of the rest of the test set minus that of its weakest slice (a bin of brightness, contrast, "
               "sharpness, colourfulness, size or aspect, or a pair of bins), with an interval adjusted for the "
               "number of slices tested.", slice_gap))
register(Check("group_gap", "Worst-group accuracy gap", "slices and groups", False,
               "Accuracy of the best group minus that of the worst (groups from the dataset's metadata columns), "
               "with an interval adjusted for the number of group pairs.", group_gap))


def _point(value: float, threshold: dict, higher_is_better: bool) -> str:
    def worse(limit: float) -> bool:  # strictly on the bad side: a value on the threshold passes it
        return value < limit if higher_is_better else value > limit
    if "fail" in threshold and worse(threshold["fail"]):
        return "fail"
    if "warn" in threshold and worse(threshold["warn"]):
        return "warn"
    return "pass"


def as_estimate(value) -> dict | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    return stats.estimate(value, 0, method="none", note="no interval")


def judge(value, threshold: dict, higher_is_better: bool) -> str:
    """pass / warn / fail against {warn, fail}; inconclusive when the value's interval straddles a
    threshold (or the sample is too small for an interval); n/a when there is no value. A bare number
    (no interval) is judged as it is."""
    est = as_estimate(value)
    if est is None or est["value"] is None:
        return "n/a"
    if est["method"] == "none":
        return _point(est["value"], threshold, higher_is_better)
    if est["ci_low"] is None and est["ci_high"] is None:
        return "inconclusive"
    # one missing bound: the interval is unbounded on that side (e.g. a ratio whose denominator can be 0)
    bounds = (-np.inf if est["ci_low"] is None else est["ci_low"], np.inf if est["ci_high"] is None else est["ci_high"])
    lo, hi = (_point(b, threshold, higher_is_better) for b in bounds)
    return lo if lo == hi else "inconclusive"


def settle(est: dict | None, threshold: dict) -> str:
    """What would settle an inconclusive verdict, in words."""
    if est is None:
        return ""
    if est["ci_low"] is None and est["ci_high"] is None:
        return est["note"] or "too few images for an interval"
    if est["ci_low"] is None or est["ci_high"] is None:
        return est["note"] or "the interval is unbounded on one side; add images"
    crossed = [t for t in (threshold.get("warn"), threshold.get("fail")) if t is not None and stats.straddles(est, t)]
    if not crossed:
        return ""
    t = min(crossed, key=lambda t: abs(t - est["value"]))
    more = stats.more_images(est, t)
    if more is None:
        return f"the value sits on the threshold {t:g}; no sample size settles it"
    return f"about {more:,} more images would settle it against {t:g}"


# Checks that still mean something for a degenerate model (collapsed, or at chance): its accuracy and
# what it gains over the baseline. Every other check reads behaviour relative to a working model.
SCORED_WHEN_DEGENERATE = ("accuracy", "gain_over_baseline", "leakage")  # leakage is about the data


def run_checks(results: dict, thresholds: dict) -> list[dict]:
    deg = (results.get("eval") or {}).get("degenerate") or {}
    out = []
    for name, check in CHECKS.items():
        if name not in thresholds:
            continue
        t = thresholds[name]
        targets = [None]
        if check.per_method:
            targets = [m for m, r in results.get("explain", {}).items()
                       if m != "random" and r["meta"].get("applicable")]
        for method in targets:
            est = as_estimate(check.value(results, method) if check.per_method else check.value(results))
            label = check.label if method is None else f"{results['explain'][method]['meta']['label']}: {check.label.lower()}"
            status = judge(est, t, check.higher_is_better)
            if deg.get("is") and name not in SCORED_WHEN_DEGENERATE:
                status = "n/a"
                est = None if est is None else {**est, "note": f"not scored: the model is degenerate ({deg['why']})"}
            out.append({"name": name if method is None else f"{name}:{method}", "check": name, "method": method,
                        "label": label, "category": check.category, "higher_is_better": check.higher_is_better,
                        "description": check.description, "value": None if est is None else est["value"],
                        "n": None if est is None else est["n"], "ci_low": None if est is None else est["ci_low"],
                        "ci_high": None if est is None else est["ci_high"],
                        "interval": None if est is None else est["method"], "note": "" if est is None else est["note"],
                        "warn": t.get("warn"), "fail": t.get("fail"), "status": status,
                        "settle": settle(est, t) if status == "inconclusive" else ""})
    return out


def overall(verdicts: list[dict]) -> str:
    return max((v["status"] for v in verdicts), key=STATUS_ORDER.get, default="pass")


def method_sentence(label: str, faithful: str, sane: str, sanity_value: float | None) -> str:
    """One line a person can act on, from a method's faithfulness and sanity verdicts."""
    corr = "" if sanity_value is None else f" (rank correlation {sanity_value:.2f} with every layer re-initialised)"
    good_f, good_s = faithful == "pass", sane == "pass"
    if faithful == "n/a" and sane == "n/a":
        return f"{label} was not checked."
    if "inconclusive" in (faithful, sane):
        which = " and ".join(k for k, s in (("faithfulness", faithful), ("parameter randomisation", sane)) if s == "inconclusive")
        return (f"{label}: too few audit images to judge its {which} check (the interval straddles a threshold); "
                "raise audit.max_images or explain.trust.sanity_images.")
    sanity = {"fail": "fails", "warn": "only just passes", "pass": "passes", "n/a": "was not run for"}[sane]
    if good_f and good_s:
        return f"{label} passes both checks: its maps beat a random map and change when the model is randomised{corr}."
    if good_f and sane == "n/a":
        return f"{label} beats a random map; its parameter-randomisation check was not run."
    if faithful == "n/a":
        return f"{label}: its faithfulness was not checked, and it {sanity} the parameter-randomisation check{corr}."
    if good_f:
        return (f"{label} passes its input but not its model: it {sanity} the parameter-randomisation check{corr}, so its "
                "maps show the image more than what the network learned.")
    if good_s:
        return (f"{label} depends on the model but is not faithful: removing its top pixels hurts the prediction "
                "hardly more than removing random ones.")
    return (f"{label} is not reliable here: it does not clearly beat a random map, and it {sanity} the parameter-randomisation "
            f"check{corr}.")
