"""What a report leads with: the conclusive findings in sentences, and what would settle the rest.

From the verdicts (cvaudit.report.checks) and the stages' run times (Snakemake's benchmark files): each failing
or warning check of the model with its number, interval, n and what to do; the passes in one line; the
inconclusive checks grouped by the config key whose image count sets their n, with the count that
would settle about half of them and what that costs in run time on the machine that ran this audit
(the stage's time scaled by the number of images, which is how every sampled stage grows).
"""
from __future__ import annotations

import math

from cvaudit.core import stats


def _target(v: dict) -> int | None:
    """The n at which this inconclusive verdict's interval would clear its nearest threshold (None: the
    value sits on it, or nothing says)."""
    n = v["n"] or 0
    if v["ci_low"] is None and v["ci_high"] is None:  # too few images for an interval at all
        return stats.MIN_BOOTSTRAP_N if n < stats.MIN_BOOTSTRAP_N else None
    if v["ci_low"] is None or v["ci_high"] is None or v["value"] is None:
        return None
    crossed = [t for t in (v["warn"], v["fail"]) if t is not None and v["ci_low"] < t < v["ci_high"]]
    if not crossed:
        return None
    t = min(crossed, key=lambda t: abs(t - v["value"]))
    more = stats.more_images({"value": v["value"], "ci_low": v["ci_low"], "ci_high": v["ci_high"], "n": n}, t)
    return None if more is None else n + more


def _round_up(n: int) -> int:
    """Up to two significant digits: 1234 -> 1300."""
    if n < 100:
        return n
    step = 10 ** (len(str(n)) - 2)
    return int(math.ceil(n / step) * step)


def _stage_seconds(stage: str | None, stage_runs: list[dict]) -> float | None:
    if not stage:
        return None
    secs = [r["seconds"] for r in stage_runs if r["seconds"] is not None
            and (r["stage"] == stage or r["stage"].startswith(stage + " "))]  # "explain gradcam": one job of a stage
    return sum(secs) if secs else None


def undecided(verdicts: list[dict], stage_runs: list[dict], n_classes: int | None = None,
              per_class: int | None = None) -> list[dict]:
    """The inconclusive verdicts grouped by what sets their n: per group the checks, their current n, the n
    that would settle about half of them, the config change that gives it and the extra run time."""
    groups: dict[str, list[dict]] = {}
    for v in verdicts:
        if v["status"] == "inconclusive":
            groups.setdefault(v.get("sized_by") or "the test split", []).append(v)
    out = []
    for key, vs in groups.items():
        ns = sorted(v["n"] or 0 for v in vs)
        n_now = ns[len(ns) // 2]
        targets = sorted(t for v in vs if (t := _target(v)) is not None)
        g = {"key": key, "checks": [v["label"] for v in vs], "count": len(vs), "n": n_now, "target": None,
             "settles": 0, "change": "", "extra_seconds": None}
        if targets:
            target = _round_up(targets[(len(targets) - 1) // 2])
            g.update(target=target, settles=sum(t <= target for t in targets))
            if key == "the test split":
                g["change"] = f"about {max(0, target - n_now):,} more labelled test images"
            else:
                g["change"] = f"{key}: {target}"
                if key == "audit.max_images" and n_classes and math.ceil(target / n_classes) > (per_class or 0):
                    g["change"] += f" with audit.per_class: {math.ceil(target / n_classes)}"  # the set is per class
                secs = _stage_seconds(vs[0].get("stage"), stage_runs)
                if secs is not None and n_now > 0:
                    g["extra_seconds"] = secs * max(0.0, target / n_now - 1)
        out.append(g)
    return sorted(out, key=lambda g: -g["count"])


def headline(model_verdicts: list[dict], n_undecided: int) -> dict:
    """The overall status in words: a conclusive failure is not the same as nothing conclusive."""
    fails = [v for v in model_verdicts if v["status"] == "fail"]
    warns = [v for v in model_verdicts if v["status"] == "warn"]
    passes = [v for v in model_verdicts if v["status"] == "pass"]
    if fails:
        text = f"fails {len(fails)} conclusive check{'s' * (len(fails) != 1)}" + (f" and warns on {len(warns)}" if warns else "")
    elif warns:
        text = f"warns on {len(warns)} conclusive check{'s' * (len(warns) != 1)}"
    elif passes and not n_undecided:
        text = "passes every check"
    elif passes:
        text = f"passes {len(passes)} conclusive check{'s' * (len(passes) != 1)}; nothing conclusive fails"
    else:
        text = "nothing conclusive: no check could be decided on this data"
    return {"text": text, "fails": len(fails), "warns": len(warns), "passes": len(passes),
            "undecided": n_undecided, "conclusive": bool(fails or warns or passes)}


def findings(verdicts: list[dict], stage_runs: list[dict], n_classes: int | None = None,
             per_class: int | None = None) -> dict:
    """Everything the report's first page says, from every verdict (the model's and each method's)."""
    model = [v for v in verdicts if v["method"] is None]
    bad = sorted((v for v in model if v["status"] in ("fail", "warn")), key=lambda v: v["status"] != "fail")
    methods = [v for v in verdicts if v["method"] is not None]
    return {"headline": headline(model, sum(v["status"] == "inconclusive" for v in verdicts)),
            "bad": bad, "passed": [v["label"] for v in model if v["status"] == "pass"],
            "not_run": [v["label"] for v in model if v["status"] == "n/a"],
            "method_bad": sum(v["status"] in ("fail", "warn") for v in methods),
            "undecided": undecided(verdicts, stage_runs, n_classes, per_class)}
