"""Audit verdicts. Each check carries its own name, category and direction (as in Quantus), so the
report renders any of them without special cases; thresholds come from config key `verdicts`."""
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
    value: Callable[[dict], float | None]  # from the report's results dict


CHECKS: dict[str, Check] = {}


def register(check: Check) -> Check:
    CHECKS[check.name] = check
    return check


register(Check("accuracy", "Test accuracy", "performance", True,
               "Share of test images whose top prediction is the true class.",
               lambda r: r["eval"]["accuracy"]))
register(Check("gain_over_baseline", "Gain over classic ML baseline", "baselines", True,
               "Test accuracy minus that of logistic regression on downsampled pixels (same split): "
               "what the network buys over classic ML.",
               lambda r: r["eval"].get("gain_over_baseline")))


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
        v = check.value(results)
        t = thresholds[name]
        out.append({"name": name, "label": check.label, "category": check.category,
                    "higher_is_better": check.higher_is_better, "description": check.description,
                    "value": v, "warn": t.get("warn"), "fail": t.get("fail"),
                    "status": judge(v, t, check.higher_is_better)})
    return out


def overall(verdicts: list[dict]) -> str:
    return max((v["status"] for v in verdicts), key=STATUS_ORDER.get, default="pass")
