"""The report's first page: conclusive findings in words, and what would settle the undecided checks."""
import threading
import time

import pytest

from cvaudit.core import progress
from cvaudit.report.checks import CHECKS
from cvaudit.report.findings import _target, findings, headline


def verdict(check, status, value, lo, hi, n, warn=0.8, fail=0.5, method=None, higher=True):
    c = CHECKS[check]
    return {"name": check if method is None else f"{check}:{method}", "check": check, "method": method,
            "label": c.label if method is None else f"{method}: {c.label.lower()}", "category": c.category,
            "higher_is_better": higher, "value": value, "ci_low": lo, "ci_high": hi, "n": n, "warn": warn,
            "fail": fail, "status": status, "action": c.action, "sized_by": c.sized_by, "stage": c.stage}


def test_every_check_says_what_to_do_and_what_sets_its_n():
    assert all(c.action and c.sized_by for c in CHECKS.values())
    assert all(c.stage for c in CHECKS.values() if c.sized_by != "the test split")


def test_the_target_is_the_n_whose_interval_clears_the_nearest_threshold():
    # value 0.7, half-width 0.2 at n = 100: clearing the warn threshold 0.8 (gap 0.1) needs (0.2 / 0.1)^2 = 4x the images
    assert _target(verdict("accuracy", "inconclusive", 0.7, 0.5, 0.9, 100)) == 400
    assert _target(verdict("accuracy", "inconclusive", 0.7, None, None, 6)) == 10  # no interval below 10 images
    assert _target(verdict("accuracy", "inconclusive", 0.7, None, None, 40)) is None


def test_a_conclusive_failure_is_told_apart_from_nothing_conclusive():
    fail = verdict("robust_accuracy", "fail", 0.0, 0.0, 0.1, 30)
    undecided = verdict("accuracy", "inconclusive", 0.7, 0.5, 0.9, 100)
    passed = verdict("rotation_accuracy", "pass", 0.95, 0.9, 0.99, 200)
    assert headline([fail, undecided, passed], 1)["text"] == "fails 1 conclusive check"
    warn = verdict("ece", "warn", 0.08, 0.06, 0.11, 700)
    assert headline([fail, warn, warn], 0)["text"] == "fails 1 conclusive check and warns on 2"
    assert headline([undecided, passed], 1)["text"] == "passes 1 conclusive check; nothing conclusive fails"
    h = headline([undecided], 1)
    assert h["text"].startswith("nothing conclusive") and not h["conclusive"]
    assert headline([passed], 0)["text"] == "passes every check"


def test_undecided_checks_are_grouped_by_the_key_that_sizes_them_with_the_run_time_it_costs():
    vs = [verdict("faithfulness_gain", "inconclusive", 0.05, -0.02, 0.12, 20, warn=0.1, fail=0.0, method=m)
          for m in ("gradcam", "lime", "shap")]
    vs.append(verdict("accuracy", "inconclusive", 0.7, 0.5, 0.9, 100))
    vs.append(verdict("robust_accuracy", "fail", 0.0, 0.0, 0.1, 30))
    runs = [{"stage": "explain gradcam", "seconds": 30.0}, {"stage": "explain lime", "seconds": 50.0},
            {"stage": "evaluate_model", "seconds": 999.0}, {"stage": "explained", "seconds": 999.0}]
    f = findings(vs, runs, n_classes=4, per_class=2)
    assert [v["check"] for v in f["bad"]] == ["robust_accuracy"]
    audit, test = f["undecided"]  # the larger group first
    assert (audit["key"], audit["count"], audit["n"], test["key"], test["count"]) == \
        ("audit.max_images", 3, 20, "the test split", 1)
    # each method: the warn threshold 0.1 is 0.05 away with a half-width of 0.07: (0.07 / 0.05)^2 * 20 = 39.2 -> 40
    assert audit["target"] == 40 and audit["settles"] == 3
    assert audit["change"] == "audit.max_images: 40 with audit.per_class: 10"
    assert findings(vs, runs, n_classes=4, per_class=10)["undecided"][0]["change"] == "audit.max_images: 40"
    assert audit["extra_seconds"] == pytest.approx(80.0)  # the explain stages' 80 s, doubled images
    assert test["change"] == "about 300 more labelled test images"


def test_the_heartbeat_writes_progress_with_the_time_left_while_a_job_runs():
    lines = []
    with progress.heartbeat(0.05, lines.append):
        progress.task("attacking", 10, "images")
        progress.advance(5)
        time.sleep(0.3)
    n = len(lines)
    time.sleep(0.15)
    assert len(lines) == n >= 3, "it writes every interval while the block runs, and stops with it"
    assert "attacking: 5 of 10 images (50%" in lines[-1] and "left for this part" in lines[-1]
    assert threading.active_count() == 1 or all(t.name != "cvaudit-heartbeat" for t in threading.enumerate())


def test_the_time_left_is_the_rate_so_far_times_what_is_left():
    progress.task("x", 100)
    progress._state["since"] = 0.0
    progress.advance(25)
    assert progress.line(now=60.0, started=0.0) == "x: 25 of 100 images (25%; elapsed 1 min 00 s; about 3 min 00 s left for this part)"
    assert progress.duration(3725) == "1 h 02 min"
