"""Conformal prediction sets (the calibrate stage): LAC sets equal the split-conformal rule computed by hand; on
exchangeable images the promise holds and the coverage verdict passes; on images unlike the calibration ones
(labels the probabilities do not follow) it breaks and the verdict fails; too few calibration images is said."""
import math

import numpy as np
import pytest

from cvaudit.report.behaviour_checks import coverage
from cvaudit.report.judge import judge
from cvaudit.robust.conformal import conformal, coverage_report, min_calibration, prediction_sets

THRESHOLDS = {"warn": -0.03, "fail": -0.05}
OPTIONS = {"enabled": True, "level": 0.9, "score": "aps"}


def sample(n: int, k: int = 5, seed: int = 0, follow: bool = True):
    """Probabilities of a softmax model and labels drawn from them (follow) or uniformly (a set unlike it)."""
    rng = np.random.default_rng(seed)
    p = np.exp(rng.normal(size=(n, k)) * 2)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p]) if follow else rng.integers(0, k, n)
    return p, y


@pytest.mark.parametrize("level", [0.9, 0.8])
def test_lac_sets_are_the_split_conformal_rule_computed_by_hand(level):
    pv, yv = sample(500, seed=1)
    pt, _ = sample(300, seed=2)
    scores = np.sort(1 - pv[np.arange(len(yv)), yv])
    qhat = scores[math.ceil((len(yv) + 1) * level) - 1]  # the ceil((n+1)(1-alpha))-th smallest score
    lac = prediction_sets(pv, yv, pt, level, "lac")
    assert lac.dtype == bool and np.array_equal(lac, 1 - pt <= qhat)
    aps = prediction_sets(pv, yv, pt, level, "aps")  # another score: other sets
    assert aps.shape == lac.shape and aps.sum() > lac.sum()


@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_on_exchangeable_images_the_promise_holds_and_the_verdict_passes(score):
    pv, yv = sample(1500, seed=3)
    pt, yt = sample(1500, seed=4)
    r = conformal(pv, yv, pt, yt, list("abcde"), {**OPTIONS, "score": score})
    assert r["reason"] == "" and r["n"] == 1500 and r["n_calibration"] == 1500
    assert r["coverage"]["value"] >= 0.9 - 0.02  # APS and RAPS without randomisation cover a little more
    assert r["coverage"]["value"] <= (0.92 if score == "lac" else 0.96)
    assert sum(r["size_counts"]) == 1500 and r["mean_size"] == pytest.approx(
        sum(i * c for i, c in enumerate(r["size_counts"])) / 1500)
    assert {c["class"] for c in r["per_class"]} == set("abcde")
    assert r["worst_class"]["coverage"] == min(c["coverage"] for c in r["per_class"])
    est = coverage({"robust": {"calibration": {"conformal": r}}})
    assert est["value"] == pytest.approx(r["coverage"]["value"] - 0.9)
    assert est["ci_low"] == pytest.approx(r["coverage"]["ci_low"] - 0.9)
    assert judge(est, THRESHOLDS, True) == "pass" and score in est["note"]


def test_on_images_unlike_the_calibration_ones_the_promise_breaks_and_the_verdict_fails():
    pv, yv = sample(1000, seed=5)
    pt, yt = sample(1000, seed=6, follow=False)  # labels the probabilities do not follow
    r = conformal(pv, yv, pt, yt, list("abcde"), OPTIONS)
    assert r["coverage"]["ci_high"] < 0.85
    assert judge(coverage({"robust": {"calibration": {"conformal": r}}}), THRESHOLDS, True) == "fail"


def test_too_few_calibration_images_is_said_and_not_judged():
    assert [min_calibration(a) for a in (0.9, 0.95, 0.8, 0.5, 0.75, 0.2)] == [11, 21, 6, 3, 5, 6]
    pv, yv = sample(10)
    r = conformal(pv, yv, *sample(20, seed=1), list("abcde"), OPTIONS)
    assert "needs at least 11" in r["reason"] and "coverage" not in r
    assert (r["level"], r["score"], r["n_calibration"]) == (0.9, "aps", 10)
    assert coverage({"robust": {"calibration": {"conformal": r}}}) is None
    assert coverage({}) is None
    pv, yv = sample(11)  # exactly enough
    assert conformal(pv, yv, *sample(20, seed=1), list("abcde"), OPTIONS)["n"] == 20
    none = conformal(*sample(50), np.zeros((0, 5)), np.zeros(0, int), list("abcde"), OPTIONS)
    assert none["reason"] == "the test split has no images" and "coverage" not in none


def test_the_report_counts_sizes_and_classes():
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1], [0, 0, 0], [0, 1, 0], [0, 0, 1]], bool)
    r = coverage_report(sets, np.array([0, 1, 2, 1, 0, 2, 2]), ["x", "y", "z", "w"], 0.8)
    assert r["coverage"]["value"] == pytest.approx(4 / 7) and (r["level"], r["n"]) == (0.8, 7)
    assert (r["empty"], r["singletons"], r["size_counts"]) == (2, 3, [2, 3, 2, 0])
    assert r["mean_size"] == pytest.approx(1.0)
    assert r["per_class"] == [{"class": "x", "n": 2, "coverage": 0.5, "mean_size": 0.5},
                              {"class": "y", "n": 2, "coverage": 1.0, "mean_size": 2.0},
                              {"class": "z", "n": 3, "coverage": pytest.approx(1 / 3), "mean_size": pytest.approx(2 / 3)}]
    # w has no test image
    assert r["worst_class"]["class"] == "z"
    tie = coverage_report(np.zeros((3, 2), bool), np.array([0, 1, 1]), ["x", "y"], 0.8)
    assert tie["worst_class"]["class"] == "y"  # both uncovered: the class with more images


def test_examples_show_the_largest_sets_the_misses_and_confident_singletons():
    from cvaudit.robust.conformal import examples
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1], [1, 1, 1], [0, 1, 0], [0, 0, 1], [1, 1, 1]], bool)
    targets = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    probs = np.array([[.9, .05, .05], [.5, .4, .1], [.4, .3, .3], [.2, .4, .4], [.35, .33, .32], [.1, .8, .1],
                      [.1, .1, .8], [.4, .3, .3]])
    got = examples(sets, probs, targets, [f"p{i}" for i in range(8)], ["x", "y", "z"])
    assert [(e["kind"], e["path"]) for e in got] == [
        ("largest", "p4"), ("largest", "p7"), ("largest", "p3"),  # size 3 (the less confident first), then size 2
        ("missed", "p5"), ("missed", "p2"),  # the true class outside the set: the most confident miss first
        ("singleton", "p0"), ("singleton", "p6")]
    assert got[3] == {"kind": "missed", "path": "p5", "true": "z", "set": ["y"], "covered": False}
    assert got[0]["set"] == ["x", "y", "z"] and got[0]["covered"]


def test_coverage_per_group_of_the_metadata_the_least_covered_first():
    sets = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0], [0, 1]], bool)
    targets = np.array([0, 1, 0, 0, 0, 1])  # covered: yes, yes, no, no, yes, yes
    r = coverage_report(sets, targets, ["x", "y"], 0.8, {"site": np.array(["a", "a", "b", "b", "b", "c"], object)})
    rows = r["per_group"]["site"]
    assert [g["value"] for g in rows] == ["b", "a", "c"]  # b 1 of 3; a and c all covered, the larger first
    assert rows[0]["n"] == 3 and rows[0]["coverage"]["value"] == pytest.approx(1 / 3) and rows[0]["mean_size"] == pytest.approx(2 / 3)
    assert rows[0]["coverage"]["ci_low"] < 1 / 3 < rows[0]["coverage"]["ci_high"]
    assert rows[1]["mean_size"] == 1.5 and coverage_report(sets, targets, ["x", "y"], 0.8)["per_group"] == {}


def test_the_block_carries_examples_and_groups_of_the_same_sets():
    from cvaudit.robust.conformal import examples
    pv, yv = sample(300, seed=3)
    pt, yt = sample(120, seed=4)
    paths = [f"t{i}.png" for i in range(120)]
    site = np.array(["a", "b", "c"] * 40, object)
    r = conformal(pv, yv, pt, yt, list("abcde"), OPTIONS, paths=paths, groups={"site": site})
    sets = prediction_sets(pv, yv, pt, 0.9, "aps")
    assert r["examples"] == examples(sets, pt, yt, paths, list("abcde")) and len(r["examples"]) == 9
    assert r["per_group"] == coverage_report(sets, yt, list("abcde"), 0.9, {"site": site})["per_group"]
    assert sum(g["n"] for g in r["per_group"]["site"]) == 120
    bare = conformal(pv, yv, pt, yt, list("abcde"), OPTIONS)
    assert bare["examples"] == [] and bare["per_group"] == {} and bare["coverage"] == r["coverage"]  # seeded
    other = conformal(pv, yv, pt, yt, list("abcde"), OPTIONS, seed=1)
    assert (prediction_sets(pv, yv, pt, 0.9, "aps", seed=1) != sets).any() and other["mean_size"] != r["mean_size"]
    pv, yv = sample(11)  # exactly enough to calibrate, but nothing to test on
    assert conformal(pv, yv, np.zeros((0, 5)), np.zeros(0, int), list("abcde"), OPTIONS)["reason"] == \
        "the test split has no images"


def test_an_example_is_shown_once_and_ties_keep_the_images_order():
    from cvaudit.robust.conformal import examples
    sets = np.array([[0, 1, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]], bool)
    targets = np.array([0, 0, 0, 0, 0, 1])  # 0: the largest set, and it misses; 2 and 3 miss too, at one confidence
    probs = np.array([[.1, .3, .3, .3], [.7, .1, .1, .1], [.1, .6, .2, .1], [.1, .2, .6, .1], [.9, 0, 0, .1],
                      [.1, .9, 0, 0]])
    got = [(e["kind"], e["path"]) for e in examples(sets, probs, targets, list("012345"), list("wxyz"))]
    # the three largest (then the least confident; 2 before 3 at one confidence) are the three misses: each shown once
    assert got == [("largest", "0"), ("largest", "2"), ("largest", "3"),
                   ("singleton", "4"), ("singleton", "5"), ("singleton", "1")]
    tied = examples(sets[[1, 2, 3]], np.array([[.7, .1, .1, .1], [.1, .6, .2, .1], [.1, .2, .6, .1]]),
                    np.array([0, 0, 0]), list("abc"), list("wxyz"))
    assert [(e["kind"], e["path"]) for e in tied] == [("largest", "b"), ("largest", "c"), ("largest", "a")]
