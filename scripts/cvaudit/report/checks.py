"""Audit verdicts: every check of the modules by concern judged against its thresholds (config key `verdicts`)."""
from __future__ import annotations

from cvaudit.report import attribution_checks, behaviour_checks, shortcut_checks
from cvaudit.report.check_registry import Check
from cvaudit.report.judge import as_estimate, judge, settle

# The verdicts table's order: the model's behaviour, what it learnt from its data, then each attribution method.
CHECKS: dict[str, Check] = {name: check for module in (behaviour_checks, shortcut_checks, attribution_checks)
                            for name, check in module.CHECKS.items()}


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
