"""Audit verdicts. Each check carries its own name, category and direction (as in Quantus), so the
report renders any of them without special cases; thresholds come from config key `verdicts`.
A check is either about the model (one verdict) or about each attribution method (one per method)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

STATUS_ORDER = {"pass": 0, "n/a": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Check:
    name: str
    label: str
    category: str
    higher_is_better: bool
    description: str
    value: Callable  # model checks: value(results); method checks: value(results, method)
    per_method: bool = False


CHECKS: dict[str, Check] = {}


def register(check: Check) -> Check:
    CHECKS[check.name] = check
    return check


def _gap(meta: dict) -> float | None:
    f = meta.get("faithfulness")
    return None if not f else f["insertion_auc"] - f["deletion_auc"]


def faithfulness_gain(results: dict, method: str) -> float | None:
    mine, floor = _gap(results["explain"][method]["meta"]), _gap(results["explain"].get("random", {}).get("meta", {}))
    return None if mine is None or floor is None else mine - floor


register(Check("accuracy", "Test accuracy", "performance", True,
               "Share of test images whose top prediction is the true class.",
               lambda r: r["eval"]["accuracy"]))
register(Check("gain_over_baseline", "Gain over classic ML baseline", "baselines", True,
               "Test accuracy minus that of logistic regression on downsampled pixels (same split): "
               "what the network buys over classic ML.",
               lambda r: r["eval"].get("gain_over_baseline")))
register(Check("faithfulness_gain", "Faithfulness beyond a random map", "attribution faithfulness", True,
               "(insertion AUC - deletion AUC) of the method minus that of a random map: how much better its "
               "ranking of pixels predicts what the model needs.",
               faithfulness_gain, per_method=True))
register(Check("sanity_similarity", "Similarity after model randomisation", "attribution sanity", False,
               "Rank correlation between the maps of the trained model and of the same model with every layer "
               "re-initialised (Adebayo et al.); a map that barely changes does not explain the model.",
               lambda r, m: (r["explain"][m]["meta"].get("sanity") or {}).get("final_rank_corr"), per_method=True))


def _robust(r: dict) -> dict:
    return r.get("robust") or {}


def rotation_accuracy(r: dict) -> float | None:
    """Mean test accuracy at +-check_angle degrees (whichever of the two were run)."""
    rob = _robust(r)
    inv = rob.get("invariance", {}).get("rotate")
    if not inv:
        return None
    accs = [a for s, a in zip(inv["severities"], inv["accuracy"]) if abs(abs(s) - rob["check_angle"]) < 1e-9]
    return sum(accs) / len(accs) if accs else None


def fgsm_accuracy(r: dict) -> float | None:
    rob = _robust(r)
    adv = rob.get("adversarial", {}).get("fgsm")
    if not adv:
        return None
    accs = [a for e, a in zip(adv["epsilons"], adv["accuracy"]) if abs(e - rob["check_epsilon"]) < 1e-9]
    return accs[0] if accs else None


register(Check("ece", "Expected calibration error", "calibration", False,
               "Average gap between confidence and accuracy over confidence bins on the test set (before "
               "temperature scaling): how far the model's probabilities can be taken at face value.",
               lambda r: (_robust(r).get("calibration") or {}).get("before", {}).get("ece")))
register(Check("rotation_accuracy", "Accuracy under rotation", "invariance", True,
               "Test accuracy with every image rotated by the configured angle (robustness.check_angle).",
               rotation_accuracy))
register(Check("fgsm_accuracy", "Accuracy under FGSM", "adversarial", True,
               "Test accuracy against the fast gradient sign attack at the configured radius "
               "(robustness.adversarial.check_epsilon).", fgsm_accuracy))


def judge(value: float | None, threshold: dict, higher_is_better: bool) -> str:
    """pass / warn / fail against {warn, fail}; n/a when there is no value."""
    if value is None:
        return "n/a"
    sign = 1 if higher_is_better else -1
    if "fail" in threshold and sign * value < sign * threshold["fail"]:
        return "fail"
    if "warn" in threshold and sign * value < sign * threshold["warn"]:
        return "warn"
    return "pass"


def run_checks(results: dict, thresholds: dict) -> list[dict]:
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
            v = check.value(results, method) if check.per_method else check.value(results)
            label = check.label if method is None else f"{results['explain'][method]['meta']['label']}: {check.label.lower()}"
            out.append({"name": name if method is None else f"{name}:{method}", "check": name, "method": method,
                        "label": label, "category": check.category, "higher_is_better": check.higher_is_better,
                        "description": check.description, "value": v, "warn": t.get("warn"), "fail": t.get("fail"),
                        "status": judge(v, t, check.higher_is_better)})
    return out


def overall(verdicts: list[dict]) -> str:
    return max((v["status"] for v in verdicts), key=STATUS_ORDER.get, default="pass")


def method_sentence(label: str, faithful: str, sane: str, sanity_value: float | None) -> str:
    """One line a person can act on, from a method's faithfulness and sanity verdicts."""
    corr = "" if sanity_value is None else f" (rank correlation {sanity_value:.2f} with every layer re-initialised)"
    good_f, good_s = faithful == "pass", sane == "pass"
    if faithful == "n/a" and sane == "n/a":
        return f"{label} was not checked."
    if good_f and good_s:
        return f"{label} passes both checks: its maps beat a random map and change when the model is randomised{corr}."
    if good_f and not good_s:
        return (f"{label} passes its input but not its model: it fails the randomisation check{corr}, so its maps "
                "show the image more than what the network learned.")
    if good_s and not good_f:
        return (f"{label} depends on the model but is not faithful: removing its top pixels hurts the prediction "
                "hardly more than removing random ones.")
    sanity = {"fail": "fails", "warn": "only just passes", "pass": "passes", "n/a": "was not run for"}[sane]
    return (f"{label} is not reliable here: it does not clearly beat a random map, and it {sanity} the randomisation "
            f"check{corr}.")
