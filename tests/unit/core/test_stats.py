"""Known answers for the uncertainty every verdict carries: each interval, test and sample-size
estimate against its definition or an independent computation."""
import math

import numpy as np
import pytest

from cvaudit.core import stats


def test_an_estimate_is_a_plain_dict_and_non_finite_numbers_become_none():
    assert stats.estimate(0.5, 10, 0.4, 0.6, "wilson", "n") == {"value": 0.5, "n": 10, "ci_low": 0.4, "ci_high": 0.6,
                                                               "method": "wilson", "note": "n"}
    e = stats.estimate(float("nan"), 3.0, float("inf"), None)
    assert e == {"value": None, "n": 3, "ci_low": None, "ci_high": None, "method": "", "note": ""}
    assert type(e["n"]) is int and type(stats.estimate(np.float32(0.25), 1)["value"]) is float


def test_wilson_interval_equals_its_closed_form():
    k, n, z = 17, 20, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    e = stats.proportion(k, n)
    assert e["value"] == 0.85 and e["n"] == 20 and e["method"] == "wilson" and e["note"] == ""
    assert e["ci_low"] == pytest.approx(centre - half, abs=1e-9) and e["ci_high"] == pytest.approx(centre + half, abs=1e-9)
    assert stats.proportion(0, 0) == {"value": None, "n": 0, "ci_low": None, "ci_high": None, "method": "wilson",
                                      "note": "no images"}
    assert stats.proportion(3, -1)["value"] is None
    one = stats.proportion(1, 1)  # one image is little evidence, but it is evidence: an interval, not "no images"
    assert one["value"] == 1.0 and one["n"] == 1 and one["ci_low"] == pytest.approx(0.2065, abs=1e-3)


def test_the_bootstrap_is_scipys_seeded_percentile_bootstrap_over_images():
    from scipy.stats import bootstrap
    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 1, 40)
    e = stats.mean(a, seed=4)
    ref = bootstrap([a], lambda x, axis=-1: np.mean(x, axis=axis), n_resamples=2000, confidence_level=0.95,
                    method="percentile", paired=True, vectorized=True, rng=np.random.default_rng(4))
    assert e["value"] == pytest.approx(a.mean()) and e["n"] == 40 and e["method"] == "bootstrap" and e["note"] == ""
    assert (e["ci_low"], e["ci_high"]) == (pytest.approx(ref.confidence_interval.low),
                                           pytest.approx(ref.confidence_interval.high))
    assert stats.mean(a, seed=5) != e and stats.mean(a) == stats.mean(a, seed=0)
    assert stats.bootstrap(stats._mean, a) == stats.bootstrap(stats._mean, a, seed=0)
    assert stats.paired_difference(a, a[::-1]) == stats.paired_difference(a, a[::-1], seed=0)
    assert stats.RESAMPLES == 2000 and stats.LEVEL == 0.95


def test_a_paired_difference_resamples_images_together():
    rng = np.random.default_rng(1)
    common = rng.normal(0, 3, 60)  # a large shared per-image effect that pairing cancels
    a, b = common + 0.5 + rng.normal(0, 0.1, 60), common + rng.normal(0, 0.1, 60)
    e = stats.paired_difference(a, b, seed=2)
    assert e["value"] == pytest.approx(a.mean() - b.mean())
    assert e["ci_high"] - e["ci_low"] < 0.1  # unpaired, the interval would be about 3 wide
    assert e["ci_low"] < 0.5 < e["ci_high"]
    flipped = stats.paired_difference(b, a, seed=2)
    assert flipped["value"] == pytest.approx(-e["value"]) and flipped["ci_low"] == pytest.approx(-e["ci_high"])


def test_too_few_images_give_no_interval_and_constant_samples_a_zero_width_one():
    e = stats.mean([0.1] * 9 + [0.2])  # ten: enough
    assert e["ci_low"] is not None and stats.MIN_BOOTSTRAP_N == 10
    few = stats.mean([0.1] * 8 + [0.2])
    assert few == {"value": pytest.approx(0.2 / 9 + 0.8 / 9), "n": 9, "ci_low": None, "ci_high": None,
                   "method": "bootstrap", "note": "9 images: too few for an interval (at least 10)"}
    flat = stats.mean([0.3] * 12)
    assert (flat["value"], flat["ci_low"], flat["ci_high"]) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))
    assert flat["note"] == "" and flat["method"] == "bootstrap"
    one_flat = stats.paired_difference([0.3] * 12, np.linspace(0, 1, 12), seed=0)  # only one sample constant
    assert one_flat["ci_low"] < one_flat["value"] < one_flat["ci_high"]
    assert stats.bootstrap(stats._mean, [], seed=0)["value"] is None
    assert stats.bootstrap(stats._mean)["n"] == 0  # no samples at all: no images
    flags = stats.mean([True, False] * 6)  # per-image right/wrong flags are a sample too
    assert flags["value"] == 0.5 and flags["ci_low"] < 0.5 < flags["ci_high"]
    assert stats.bootstrap(stats._mean, [1.0] * 12, value=7.0)["value"] == 7.0  # a given value is kept


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs():
    from scipy.stats import binomtest
    a = np.array([1] * 30 + [1] * 9 + [0] * 2 + [0] * 9, bool)
    b = np.array([1] * 30 + [0] * 9 + [1] * 2 + [0] * 9, bool)
    assert stats.mcnemar_p(a, b) == pytest.approx(binomtest(2, 11, 0.5).pvalue)
    assert stats.mcnemar_p(b, a) == pytest.approx(stats.mcnemar_p(a, b))
    assert stats.mcnemar_p(a, a) == 1.0 and stats.mcnemar_p([], []) is None and stats.mcnemar_p(a, b[:-1]) is None
    one = np.zeros(50, bool)
    one[0] = True
    assert stats.mcnemar_p(one, np.zeros(50, bool)) == 1.0  # one discordant pair: p = 1
    ints_a, ints_b = [int(v) for v in a], [int(v) for v in b]  # 0/1 lists, as JSON stores them
    assert stats.mcnemar_p(ints_a, ints_b) == pytest.approx(stats.mcnemar_p(a, b))
    # b right on every image: only 'b right, a wrong' pairs (3 of them): p = 2 * 0.5^3
    assert stats.mcnemar_p([0, 0, 0, 1], [1, 1, 1, 1]) == pytest.approx(0.25)


def test_straddles_means_strictly_inside_the_interval():
    e = stats.estimate(0.5, 10, 0.4, 0.6, "wilson")
    assert stats.straddles(e, 0.5) and not stats.straddles(e, 0.4) and not stats.straddles(e, 0.6)
    assert not stats.straddles(e, 0.7) and not stats.straddles(stats.estimate(0.5, 3), 0.5)


def test_more_images_scales_the_half_width_on_the_thresholds_side_as_one_over_root_n():
    e = stats.estimate(0.85, 20, 0.64, 0.95, "wilson")
    # below: the lower half-width 0.21 must shrink to the gap 0.05: n (0.21 / 0.05)^2 = 352.8 -> 353, 333 more
    assert stats.more_images(e, 0.8) == math.ceil(20 * (0.21 / 0.05) ** 2) - 20
    # above: the upper half-width 0.10 against a gap of 0.07
    assert stats.more_images(e, 0.92) == math.ceil(20 * (0.10 / 0.07) ** 2) - 20
    assert stats.more_images(e, 0.85) is None  # on the threshold: no n settles it
    assert stats.more_images(stats.estimate(0.85, 20, 0.85, 0.95, "wilson"), 0.8) is None  # no half-width
    assert stats.more_images(stats.estimate(0.85, 20), 0.8) is None
    assert stats.more_images(stats.estimate(None, 20, 0.1, 0.2), 0.8) is None
    assert stats.more_images(stats.estimate(0.85, 0, 0.8, 0.9), 0.8) is None
    assert stats.more_images(stats.estimate(0.5, 1, 0.1, 0.9), 0.8) == 1  # n (0.4 / 0.3)^2 = 1.8: 2 images, 1 more
    assert stats.more_images(stats.estimate(0.85, 20, 0.849, 0.95, "wilson"), 0.8) == 1  # already clear: at least 1


def test_error_consistency_is_cohens_kappa_of_the_right_wrong_decisions():
    """Geirhos et al. 2020's error consistency equals scikit-learn's Cohen's kappa on the two right/wrong
    vectors; the same mistakes give 1, independent ones about 0, and two perfect models no value."""
    from sklearn.metrics import cohen_kappa_score
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.8
    b = np.where(rng.random(400) < 0.7, a, rng.random(400) < 0.8)  # mostly the same mistakes
    est = stats.error_consistency(a, b, seed=0)
    assert est["value"] == pytest.approx(cohen_kappa_score(a, b))
    assert est["ci_low"] < est["value"] < est["ci_high"] and est["ci_low"] > 0.4
    assert est["observed"] == pytest.approx(np.mean(a == b))
    assert stats.error_consistency(a, a)["value"] == pytest.approx(1.0)
    indep = stats.error_consistency(a, rng.random(400) < 0.8, seed=0)
    assert indep["ci_low"] < 0 < indep["ci_high"]
    assert stats.error_consistency(np.ones(50, bool), np.ones(50, bool))["value"] is None
