"""Verdicts on each attribution method, against a random map on the same audit images (faithfulness, ROAD) and
against its own promises (parameter randomisation, class sensitivity), and the sentence a report gives each method."""
from __future__ import annotations

import numpy as np

from cvaudit.core import stats
from cvaudit.report.check_registry import Check, registrar

CHECKS: dict[str, Check] = {}
register = registrar(CHECKS)


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
