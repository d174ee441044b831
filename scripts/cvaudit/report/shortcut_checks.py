"""Verdicts on what the model may have learnt from its data rather than its task: test images leaked from
training, a Clever-Hans shortcut (a cue that flips predictions beyond its control), a concept the config forbids."""
from __future__ import annotations

from cvaudit.core import stats
from cvaudit.report.check_registry import Check, registrar
from cvaudit.report.concept_sections import forbidden_concept

CHECKS: dict[str, Check] = {}
register = registrar(CHECKS)


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
