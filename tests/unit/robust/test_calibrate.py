"""Known answers for calibration: bins, the equal-mass ECE, the bootstrap interval's own value,
the per-bin sufficiency flag, and temperature scaling's bounds."""
import numpy as np
import pytest

from cvaudit.core.calibration_error import bin_gaps
from cvaudit.robust.calibrate import MIN_PER_BIN, calibration_metrics, fit_temperature, log_probs, scaled


def test_a_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    probs = np.array([[0.8, 0.2], [0.6, 0.4]])  # edges 0.2, 0.4, 0.6, 0.8: (0.6, 0.8] and (0.4, 0.6]
    m = calibration_metrics(probs, np.array([0, 1]), bins=5)
    counts = [b["count"] for b in m["bins"]]
    assert counts == [0, 0, 1, 1, 0]
    b = m["bins"][3]
    assert (b["lo"], b["hi"], b["accuracy"], b["confidence"]) == (pytest.approx(0.6), pytest.approx(0.8), 1.0, 0.8)
    assert m["bins"][0] == {"lo": 0.0, "hi": pytest.approx(0.2), "count": 0, "accuracy": None, "confidence": None}
    assert m["mean_confidence"] == pytest.approx(0.7) and m["n"] == 2


def test_bin_gaps_equal_the_ece_and_work_row_by_row_on_resamples():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], 300)
    targets = rng.integers(0, 3, 300)
    m = calibration_metrics(probs, targets, bins=10)
    conf, correct = probs.max(1), (probs.argmax(1) == targets).astype(float)
    which = np.clip(np.digitize(conf, np.linspace(0, 1, 11)[1:-1], right=True), 0, 9)
    assert bin_gaps(conf, correct, which, 10)[0] == pytest.approx(m["ece"])
    rows = np.stack([np.arange(300), rng.integers(0, 300, 300)])  # the identity and one resample
    g = bin_gaps(conf[rows], correct[rows], which[rows], 10)
    assert g.shape == (2,) and g[0] == pytest.approx(m["ece"])
    r = rows[1]
    assert g[1] == pytest.approx(calibration_metrics(probs[r], targets[r], bins=10)["ece"])


def test_with_a_seed_the_ece_gets_its_interval_the_equal_mass_ece_and_the_per_bin_count():
    rng = np.random.default_rng(1)
    n = 400
    conf = rng.uniform(0.55, 1.0, n)
    probs = np.stack([conf, 1 - conf], 1)
    targets = (rng.uniform(size=n) > conf ** 2).astype(int)  # over-confident
    m = calibration_metrics(probs, targets, bins=8, seed=3)
    assert m["ece_ci"]["value"] == pytest.approx(m["ece"]) and m["ece_ci"]["ci_low"] < m["ece"] < m["ece_ci"]["ci_high"]
    assert m["ece_ci"]["n"] == n and m["ece_ci"]["method"] == "bootstrap"
    assert calibration_metrics(probs, targets, bins=8, seed=3)["ece_ci"] == m["ece_ci"]
    assert calibration_metrics(probs, targets, bins=8, seed=4)["ece_ci"] != m["ece_ci"]
    # equal mass: 8 bins of 50 images sorted by confidence
    order = np.argsort(conf, kind="stable")
    correct = (probs.argmax(1) == targets).astype(float)
    want = sum(abs(correct[order[k * 50:(k + 1) * 50]].mean() - conf[order[k * 50:(k + 1) * 50]].mean()) * 50 / n
               for k in range(8))
    assert m["ece_equal_mass"] == pytest.approx(want)
    filled = [b["count"] for b in m["bins"] if b["count"]]
    assert m["images_per_bin"] == float(np.median(filled)) and m["enough_per_bin"] is True
    few = calibration_metrics(probs[:30], targets[:30], bins=8, seed=3)
    assert few["images_per_bin"] < MIN_PER_BIN == 10 and few["enough_per_bin"] is False
    assert "ece_ci" not in calibration_metrics(probs, targets, bins=8)  # no seed: no interval


def test_enough_per_bin_is_at_least_ten_images_in_the_median_filled_bin():
    conf = np.r_[np.full(10, 0.95), np.full(10, 0.65)]
    probs = np.stack([conf, 1 - conf], 1)
    m = calibration_metrics(probs, np.zeros(20, int), bins=10, seed=0)
    assert m["images_per_bin"] == 10.0 and m["enough_per_bin"] is True
    m9 = calibration_metrics(probs[1:], np.zeros(19, int), bins=10, seed=0)
    assert m9["images_per_bin"] == 9.5 and m9["enough_per_bin"] is False


def test_nll_clips_a_zero_probability_and_brier_sums_over_classes():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    m = calibration_metrics(probs, np.array([1, 0]), bins=4)
    assert m["nll"] == pytest.approx((-np.log(1e-12) - np.log(0.5)) / 2)
    assert m["brier"] == pytest.approx(((1 + 1 + 0) + (0.25 + 0.0625 + 0.0625)) / 2)


def test_temperature_is_bounded_and_scaling_is_softmax_of_logits_over_t():
    z = np.array([[2.0, 0.0, -1.0]])
    e = np.exp(z / 2)
    assert np.allclose(scaled(z, 2.0), e / e.sum())
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(500, 4)) * 5
    right = logits.argmax(1)  # always right: NLL falls as T -> 0, so the fit stops at the lower bound
    assert fit_temperature(logits, right) == pytest.approx(0.05, rel=1e-3)
    wrong = (right + 1) % 4  # always wrong: NLL falls as T grows, up to the upper bound
    assert fit_temperature(logits, wrong) == pytest.approx(20.0, rel=1e-3)
    p = np.array([[0.7, 0.3, 0.0]])
    assert np.allclose(log_probs(p), [[np.log(0.7), np.log(0.3), np.log(1e-30)]])


def test_a_bin_holding_one_image_counts_and_the_default_is_15_bins():
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.56, 0.44]])
    m = calibration_metrics(probs, np.array([1, 0, 0]))
    assert len(m["bins"]) == 15 and m["ece"] == pytest.approx((0.95 + 2 * abs(1 - 0.555)) / 3)
    conf, correct = probs.max(1), np.array([0.0, 1.0, 1.0])
    which = np.array([14, 8, 8])
    assert bin_gaps(conf, correct, which, 15)[0] == pytest.approx(m["ece"])  # the 1-image bin's 0.95 included


def test_a_confidence_in_the_lowest_bin_stays_there():
    probs = np.full((1, 12), 0.91 / 11)
    probs[0, 3] = 0.09  # twelve classes, the top one at 0.09: the first of 10 bins
    m = calibration_metrics(probs, np.array([3]), bins=10)
    assert m["bins"][0]["count"] == 1 and m["bins"][1]["count"] == 0


def test_everything_is_computed_in_float64_whatever_comes_in():
    rng = np.random.default_rng(3)
    p32 = rng.dirichlet([1, 1, 1], 200).astype(np.float32)
    t = rng.integers(0, 3, 200)
    a, b = calibration_metrics(p32, t, bins=10), calibration_metrics(p32.astype(np.float64), t, bins=10)
    assert (a["ece"], a["nll"], a["brier"]) == (b["ece"], b["nll"], b["brier"])
    assert log_probs(p32).dtype == np.float64 and scaled(np.log(p32), 1.5).dtype == np.float64
    z32 = rng.normal(size=(300, 3)).astype(np.float32) * 4
    assert fit_temperature(z32, t[:200].repeat(2)[:300]) == fit_temperature(z32.astype(np.float64), t[:200].repeat(2)[:300])


def test_the_equal_mass_ece_bins_by_rank_with_ties_in_order_and_sees_gaps_of_both_signs():
    rng = np.random.default_rng(4)
    n, bins = 600, 6
    conf = rng.choice([0.6, 0.75, 0.9], n)  # heavy ties: which tied image goes to which bin is the stable order
    probs = np.stack([conf, 1 - conf], 1)
    targets = np.where(rng.uniform(size=n) < np.where(conf > 0.7, conf - 0.2, conf + 0.3), 0, 1)  # over- and under-
    m = calibration_metrics(probs, targets, bins=bins, seed=0)
    correct = (targets == 0).astype(float)
    order = np.argsort(conf, kind="stable")
    per = n // bins
    want = sum(abs(correct[order[k * per:(k + 1) * per]].mean() - conf[order[k * per:(k + 1) * per]].mean()) * per / n
               for k in range(bins))
    assert m["ece_equal_mass"] == pytest.approx(want)
    assert m["ece_equal_mass"] > abs(correct.mean() - conf.mean()) + 0.05  # not one pooled bin
