"""Verdicts on the model's behaviour: accuracy and what it gains over a classic baseline, calibration and conformal
coverage, rotation and attacks, shifted test sets, corruptions, shape bias, and its weakest slice and group."""
from __future__ import annotations

import numpy as np

from cvaudit.core import stats
from cvaudit.core.registry import ATTACKS
from cvaudit.report.check_registry import Check, registrar

CHECKS: dict[str, Check] = {}
register = registrar(CHECKS)


def accuracy(results: dict):
    ev = results["eval"]
    return ev.get("accuracy_ci") or stats.proportion(round(ev["accuracy"] * ev["n_test"]), ev["n_test"])


register(Check("accuracy", "Test accuracy", "performance", True,
               "Share of test images whose top prediction is the true class (Wilson 95% interval).", accuracy,
               action="check the confusion matrix and the mistakes shown for the classes it confuses; more or cleaner training data, longer training or a stronger architecture",
               sized_by="the test split"))
register(Check("gain_over_baseline", "Gain over classic ML baseline", "baselines", True,
               "Test accuracy minus that of logistic regression on downsampled pixels, on the same test images "
               "(paired bootstrap interval; McNemar's test in the evaluation section): what the network buys.",
               lambda r: r["eval"].get("gain_over_baseline_ci") or r["eval"].get("gain_over_baseline"),
               action="the network buys little over logistic regression on pixels: check the training curves and the data; a classic model may do",
               sized_by="the test split"))


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
    attack changed its prediction away from the true class (Wilson interval). When only gradient-free attacks ran
    the value is an upper bound: its interval is open below."""
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
    if all(a in ATTACKS and ATTACKS[a].gradient_free for a in names):  # e.g. an export's Square alone
        est.update(ci_low=None, note=est["note"] + " alone: no white-box attack ran, so this is an upper bound (the "
                   "model may be less robust): it can fail, never pass")
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
               "taken at face value.", ece,
               action="do not take its probabilities at face value; use the temperature-scaled probabilities the calibration section fits",
               sized_by="the test split"))


def coverage(r: dict):
    """Conformal coverage on the test split minus the promised level, with the Wilson interval of the coverage
    shifted by the same amount."""
    conf = (_robust(r).get("calibration") or {}).get("conformal") or {}
    est = conf.get("coverage")
    if not est:
        return None
    level = conf["level"]
    shift = lambda v: None if v is None else v - level  # noqa: E731
    worst = conf.get("worst_class") or {}
    note = (f"coverage {est['value']:.3f} of a promised {level:g} ({conf['score']} sets, mean size "
            f"{conf['mean_size']:.2f}); worst class {worst.get('class')}: {worst.get('coverage', float('nan')):.3f}")
    return {**est, "value": shift(est["value"]), "ci_low": shift(est["ci_low"]), "ci_high": shift(est["ci_high"]),
            "note": note}


register(Check("coverage", "Conformal coverage minus its promise", "calibration", True,
               "Conformal prediction sets calibrated on the validation split promise to hold the true class of at "
               "least robustness.calibration.conformal.level of the images; the value is the test split's coverage "
               "minus that level (Wilson interval). Below the thresholds the test images are not like the "
               "validation images, and no set the model gives can be trusted at its stated level.", coverage,
               action="compare the validation and test splits (a shift, a leak, or a split by time); recalibrate "
                      "the sets on images like those it will see",
               sized_by="the test split", stage="calibrate"))
register(Check("rotation_accuracy", "Accuracy under rotation", "invariance", True,
               "Test accuracy with every image rotated by the configured angle (robustness.check_angle).",
               rotation_accuracy,
               action="train with rotation augmentation if rotated inputs can occur in use",
               sized_by="robustness.max_images", stage="invariance"))
register(Check("robust_accuracy", "Accuracy under the strongest attack", "adversarial", True,
               "Test accuracy against the per-image worst case of every attack run (AutoAttack-style ensemble: "
               "APGD-CE, APGD-T on the DLR loss, Square; plus FGSM and PGD) at robustness.adversarial.check_epsilon. "
               "From gradient-free attacks alone (an export's Square) it is an upper bound: it can fail, never pass.",
               robust_accuracy,
               action="do not deploy it where inputs can be manipulated without adversarial training or input checks",
               sized_by="robustness.adversarial.max_images", stage="adversarial"))


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
               "(models.*.shift_sets), with a Newcombe interval.", shift_gap,
               action="do not rely on it for data like the shifted set; train or fine-tune on data like it",
               sized_by="robustness.shift.max_images", stage="shift"))


def mce(r: dict):
    """The mCE against the reference model; with no CE (no reference, another resolution, other images), no value
    and the reason as the note, so the verdict row says why it is not applicable."""
    co = _robust(r).get("corruptions")
    if not co:
        return None
    e = co["errors"]
    return e["mce"] or stats.estimate(None, e["mean_error"]["n"], method="none", note=e["note"] or "no mCE")


register(Check("mce", "Mean corruption error (mCE)", "corruptions", False,
               "Errors under the 15 common corruptions of Hendrycks & Dietterich (at the severities of robustness.corruptions) relative to the "
               "reference model's on the same images, averaged over corruptions; above 1: less robust than the "
               "reference (paired bootstrap interval).", mce,
               action="check the corruptions it fails worst; augment training with them if such images occur in use",
               sized_by="robustness.corruptions.max_images", stage="corruptions"))


def shape_bias(r: dict):
    st = _robust(r).get("shape_texture")
    return st["meta"]["cue_conflict"]["shape_bias"] if st else None


register(Check("shape_bias", "Shape bias", "shape and texture", True,
               "Share of shape decisions among the shape-or-texture decisions on cue-conflict images (the figure of "
               "one test image filled with the texture of another class's; Geirhos et al. 2019), Wilson interval.",
               shape_bias,
               action="it decides by texture more than shape: expect failures on images whose texture differs from training",
               sized_by="robustness.shape_texture.max_images", stage="shape_texture"))
register(Check("slice_gap", "Accuracy gap of the weakest slice", "slices and groups", False,
               "Accuracy of the rest of the test set minus that of its weakest slice (a bin of brightness, contrast, "
               "sharpness, colourfulness, size or aspect, or a pair of bins), with an interval adjusted for the "
               "number of slices tested.", slice_gap,
               action="collect or up-weight training images like the weakest slice's; report its accuracy separately",
               sized_by="the test split"))
register(Check("group_gap", "Worst-group accuracy gap", "slices and groups", False,
               "Accuracy of the best group minus that of the worst (groups from the dataset's metadata columns), "
               "with an interval adjusted for the number of group pairs.", group_gap,
               action="collect or up-weight training images of the worst group; report its accuracy separately",
               sized_by="the test split"))
