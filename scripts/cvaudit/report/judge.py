"""Verdict arithmetic: a value with its interval against {warn, fail} thresholds -> pass / warn / fail /
inconclusive / n/a, what would settle an inconclusive one, and the worst of several. The checks
live by concern in cvaudit.report.behaviour_checks, shortcut_checks and attribution_checks."""
from __future__ import annotations

import numpy as np

from cvaudit.core import stats

# pass and n/a never count; inconclusive (the interval straddles a threshold) sits between pass and warn,
# so audit.fail_on: inconclusive is the strictest gate.
STATUS_ORDER = {"pass": 0, "n/a": 0, "inconclusive": 1, "warn": 2, "fail": 3}


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


def overall(verdicts: list[dict]) -> str:
    return max((v["status"] for v in verdicts), key=STATUS_ORDER.get, default="pass")
