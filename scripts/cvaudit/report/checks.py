"""Audit verdicts. Each check carries its own name, category and direction (as in Quantus), so the
report renders any of them without special cases; thresholds come from config key `verdicts`.
A check is either about the model (one verdict) or about each attribution method (one per method)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cvaudit.core import stats
from cvaudit.core.registry import ATTACKS
from cvaudit.report.concept_sections import forbidden_concept
from cvaudit.report.judge import as_estimate, judge, settle


@dataclass(frozen=True)
class Check:
    name: str
    label: str
    category: str
    higher_is_better: bool
    description: str
    value: Callable  # model checks: value(results); method checks: value(results, method). An estimate (stats), a number or None
    per_method: bool = False
    action: str = ""  # what to do when it warns or fails, in words a report reader can act on
    sized_by: str = "the test split"  # the config key whose image count sets its n (what settles it when inconclusive)
    stage: str | None = None  # the stage whose run time grows with that count (benchmark name, or its prefix)


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
               "Share of test images whose top prediction is the true class (Wilson 95% interval).", accuracy,
               action="check the confusion matrix and the mistakes shown for the classes it confuses; more or cleaner training data, longer training or a stronger architecture",
               sized_by="the test split"))
register(Check("gain_over_baseline", "Gain over classic ML baseline", "baselines", True,
               "Test accuracy minus that of logistic regression on downsampled pixels, on the same test images "
               "(paired bootstrap interval; McNemar's test in the evaluation section): what the network buys.",
               lambda r: r["eval"].get("gain_over_baseline_ci") or r["eval"].get("gain_over_baseline"),
               action="the network buys little over logistic regression on pixels: check the training curves and the data; a classic model may do",
               sized_by="the test split"))
register(Check("faithfulness_gain", "Faithfulness beyond a random map", "attribution faithfulness", True,
               "(insertion AUC - deletion AUC) of the method minus that of a random map on the same audit images "
               "(paired bootstrap interval): how much better its ranking of pixels predicts what the model needs.",
               faithfulness_gain, per_method=True,
               action="do not read this method's maps as what the model uses; prefer a method that passes",
               sized_by="audit.max_images", stage="explain"))
register(Check("sanity_similarity", "Similarity after model randomisation", "attribution sanity", False,
               "Rank correlation between the maps of the trained model and of the same model with every layer "
               "re-initialised (Adebayo et al.); a map that barely changes does not explain the model.",
               sanity_similarity, per_method=True,
               action="this method's maps barely depend on the trained weights: do not use them to explain this model",
               sized_by="explain.trust.sanity_images", stage="explain"))
register(Check("road_gain", "ROAD beyond a random map", "attribution faithfulness", True,
               "ROAD score (Rong et al. 2022: the most and the least relevant pixels removed and filled by noisy linear "
               "imputation, so the mask leaks no shape) of the method minus that of a random map on the same audit images "
               "(paired bootstrap interval).", road_gain, per_method=True,
               action="this method's ranking of pixels does not beat a random one once shape cannot leak; prefer a method that passes",
               sized_by="audit.max_images", stage="explain"))
register(Check("class_sensitivity", "Similarity to another class's map", "attribution sanity", False,
               "Rank correlation between the map for the explained class and the map for a random other class of the "
               "same image (the random-logit test, Sixt et al. 2020); a map that barely changes shows the image, not "
               "the evidence for a class.", class_sensitivity, per_method=True,
               action="the maps show the image, not the evidence for a class: do not read them per class",
               sized_by="explain.trust.sanity_images", stage="explain"))


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
def leakage(r: dict):
    """The leaked share: test images with a near duplicate in the training or validation split, by the data
    audit's pHash or (where it ran) the model's embedding neighbours, both confirmed on the pixels."""
    audit = r.get("data_audit")
    if not audit:
        return None
    found = (audit.get("embedding") or {}).get("meta", {}).get("leaked_share")
    return found or audit["meta"]["duplicates"]["leaked_share"]


register(Check("leakage", "Test images leaked from training", "data", False,
               "Share of the test split with a near duplicate in the training or validation split (a perceptual hash, "
               "and nearest neighbours in the model's embedding up to a mirror and a shift; both confirmed on the "
               "pixels): those images were seen in training, so every metric on them is inflated (Wilson interval).",
               leakage,
               action="remove the leaked copies from the test split (the evidence CSV lists them) and re-evaluate; every metric is inflated until then",
               sized_by="the test split"))
def _searched(m: dict) -> str:
    g = m.get("global") or {}
    what = f"SpRAy over {m['n_classes_analysed']} classes ({m['n']} test images, {m['method']} maps: compact regions, edge strips, the border)"
    if g.get("searched"):
        what += f"; global properties ({', '.join(g['properties'])}) of {g['n_train']} training images"
    return what


def shortcut_suspected(r: dict):
    """The largest gain among the suspects tested: a suspect's paste (or shift) flip rate minus its control's on
    the same images, with a paired interval corrected for the number of suspects. 0 (a bare number, with its n
    and a note saying what was searched) when nothing was suspect."""
    ch = r.get("clever_hans")
    if not ch:
        return None
    m = ch["meta"]
    searched_global = (m.get("global") or {}).get("searched")
    if not m["n_classes_analysed"] and not searched_global:  # nothing searched: no verdict, not a pass
        return stats.estimate(None, m["n"], method="none",
                              note="no predicted class had enough test images to cluster (clever_hans.min_class_images)")
    if not m["flagged"]:
        return stats.estimate(0.0, m["n"], method="none", note=f"no suspect found; searched: {_searched(m)}")
    worst = m["flagged"][0]  # the stage lists them by gain, highest first
    if worst["kind"] == "property":
        what = f"{worst['class']}: {worst['shape']} shifted to the class's mean"
    else:
        what = f"{worst['class']}, cluster {worst['cluster']} ({worst['size']} images): {worst['shape']} region, {worst['area']:.0%} of the image"
    versus = f"flips {worst['paste']['value']:.0%}, its control {worst['control_paste']['value']:.0%}" \
        if worst["paste"]["value"] is not None else "no image to paste into"
    return {**worst["gain"], "note": f"{what}: {versus}"}


register(Check("shortcut_suspected", "Clever-Hans shortcut", "explanations at scale", False,
               "SpRAy (Lapuschkin et al. 2019) clusters each class's attribution maps; a cluster whose relevance sits "
               "in a small region, an edge strip or the border, the same across its images and off where objects "
               "usually are, is pasted into other classes' test images; a property on which a class's training images "
               "stand out (brightness, contrast, sharpness, border, colour) is shifted in them. The value is the share "
               "that turn into the class minus the share its control turns (the same cells elsewhere; the property "
               "shifted the other way), paired interval corrected for the suspects tested: a cue that flips "
               "predictions beyond its control is a shortcut the model learnt from the data.", shortcut_suspected,
               action="remove the cue from the training images (or balance it across classes) and retrain; until then its accuracy measures the cue",
               sized_by="clever_hans.max_images", stage="clever_hans"))
register(Check("forbidden_concept", "Forbidden concept used", "explanations at scale", False,
               "TCAV (Kim et al. 2018) of each concept the config marks forbidden (a watermark, a scanner tag), named by "
               "ordinary images that carry it: concept activation vectors learnt at one layer against random sets of "
               "training images, and per class the share of test images whose logit rises along them, tested against "
               "random CAVs. Over the classes the concept's TCAV score lies above the random CAVs', the value is the "
               "largest rise in the share of images predicted as the class when they carry the concept (its images "
               "against ordinary test images, Newcombe interval, Bonferroni-corrected): the behaviour that confirms "
               "what the directions suggest.", forbidden_concept,
               action="find the concept in the training images (the concept section shows examples) and remove or balance it, then retrain; the Clever-Hans counterfactuals show whether it flips predictions image by image",
               sized_by="concepts.*.path (example images)", stage="tcav"))
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
                        "action": check.action, "sized_by": check.sized_by, "stage": check.stage,
                        "settle": settle(est, t) if status == "inconclusive" else ""})
    return out




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
