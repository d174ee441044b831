"""Selective prediction (cvaudit.robust.selective): the risk-coverage curve and its area on hand-worked cases; a
confidence that ranks the errors last reaches the optimum, one that says nothing reaches the error rate, and ties
are kept or left out together."""
import numpy as np
import pytest

from cvaudit.robust.selective import accuracy_at, aurc, optimal_aurc, risks, selective


def test_the_area_on_hand_worked_rankings():
    wrong = np.array([0, 0, 0, 1.0])
    # the error ranked last: risks 0, 0, 0, 1/4
    assert aurc([0.9, 0.8, 0.7, 0.6], wrong) == pytest.approx(1 / 16)
    assert optimal_aurc(1, 4) == pytest.approx(1 / 16)
    # the error ranked first: 1, 1/2, 1/3, 1/4
    assert aurc([0.6, 0.7, 0.8, 0.9], wrong) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert optimal_aurc(0, 5) == 0 and optimal_aurc(5, 5) == 1


def test_equal_confidences_are_kept_or_left_out_together():
    # the two at 0.9 (one wrong) enter together: 1/2, 1/2, then 1/4, 1/4
    assert aurc([0.9, 0.9, 0.5, 0.5], [0, 1, 0, 0]) == pytest.approx(0.375)
    assert aurc([0.9, 0.9, 0.5, 0.5], [1, 0, 0, 0]) == pytest.approx(0.375)  # order within a tie does not count
    # a confidence that says nothing: the error rate at every cut-off
    assert aurc(np.full(10, 0.7), np.r_[np.ones(3), np.zeros(7)]) == pytest.approx(0.3)
    risk, kept = risks([0.9, 0.8, 0.8, 0.1], [0, 1, 0, 1])
    assert kept.tolist() == [1, 2, 3, 4] and risk.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 2])


def test_the_statistic_works_on_stacked_resamples():
    rng = np.random.default_rng(0)
    conf, wrong = rng.integers(0, 6, (5, 30)) / 5, (rng.random((5, 30)) < 0.3).astype(float)  # with ties
    assert aurc(conf, wrong, axis=-1) == pytest.approx([aurc(c, w) for c, w in zip(conf, wrong)])


def test_accuracy_of_the_most_confident_share():
    conf = np.arange(10, 0, -1) / 10  # image 0 most confident
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0], bool)
    at = accuracy_at(conf, correct, 0.8)
    assert at["kept"] == 8 and at["accuracy"]["value"] == pytest.approx(7 / 8) and at["accuracy"]["n"] == 8
    assert at["coverage"] == 0.8
    # equal confidences at the cut: the first images in their order are kept
    levels = np.random.default_rng(0).integers(0, 3, 100) / 2
    right = np.ones(100, bool)
    low = np.nonzero(levels == 0)[0]
    right[low[10:]] = False  # of the least confident, the first ten are right
    tied = accuracy_at(levels, right, (100 - len(low) + 10) / 100)
    assert tied["kept"] == 100 - len(low) + 10 and tied["accuracy"]["value"] == 1
    assert accuracy_at(conf, correct, 0.9)["kept"] == 9 and accuracy_at(conf, correct, 0.7)["accuracy"]["value"] == 1


def test_an_informative_confidence_beats_its_shuffled_self_and_the_block_reads_the_probabilities():
    rng = np.random.default_rng(1)
    n, k = 400, 4
    targets = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), targets] += rng.uniform(-1, 4, n)  # a sure margin on most, wrong where it is small
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    s = selective(probs, targets, seed=0)
    err = 1 - (probs.argmax(1) == targets).mean()
    assert s["n"] == n and s["errors"] == round(err * n) and s["aurc_uninformed"] == pytest.approx(err)
    assert s["accuracy"] == pytest.approx(1 - err)
    assert s["aurc_optimal"] < s["aurc"]["value"] < 0.6 * err  # well below chance, above the optimum
    assert s["aurc"]["ci_low"] < s["aurc"]["value"] < s["aurc"]["ci_high"] < err
    shuffled = selective(probs[rng.permutation(n)], targets, seed=0)  # confidence unrelated to the errors
    assert shuffled["aurc"]["ci_low"] > s["aurc"]["ci_high"]
    assert [a["kept"] for a in s["at"]] == [360, 320]
    assert s["at"][1]["accuracy"]["value"] > s["at"][0]["accuracy"]["value"] > 1 - err
    assert s["curve"]["coverage"][-1] == 1 and s["curve"]["risk"][-1] == pytest.approx(err)
    assert len(s["curve"]["coverage"]) == 101 and s["curve"]["coverage"][0] == 1 / n
    again, other = selective(probs, targets, seed=0), selective(probs, targets, seed=5)
    assert again["aurc"] == s["aurc"] and other["aurc"]["ci_low"] != s["aurc"]["ci_low"]  # seeded
    assert selective(probs, targets)["aurc"] == s["aurc"]  # seed 0 by default
    assert selective(np.zeros((0, 3)), np.zeros(0)) is None
