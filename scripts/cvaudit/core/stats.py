"""The uncertainty of every number a verdict rests on: n and a 95% interval.

- proportions (accuracy, robust accuracy, rotation accuracy): Wilson score interval (statsmodels);
- anything else computed per image (ECE, faithfulness gain, rank correlations, differences): a seeded
  percentile bootstrap over images (scipy.stats.bootstrap), paired where two numbers share images;
- two models on the same images: McNemar's exact test (statsmodels) for accuracy.

An Estimate is a plain dict {value, n, ci_low, ci_high, method}, so it goes into summary.json as is.
"""
from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
MIN_BOOTSTRAP_N = 10  # below this a percentile bootstrap under-covers badly: no interval, verdict inconclusive


def estimate(value, n: int, lo=None, hi=None, method: str = "", note: str = "") -> dict:
    f = lambda v: None if v is None or not np.isfinite(v) else float(v)  # noqa: E731
    return {"value": f(value), "n": int(n), "ci_low": f(lo), "ci_high": f(hi), "method": method, "note": note}


def proportion(successes: int, n: int) -> dict:
    """A share of n independent images with its Wilson 95% interval."""
    if n <= 0:
        return estimate(None, 0, method="wilson", note="no images")
    from statsmodels.stats.proportion import proportion_confint
    lo, hi = proportion_confint(int(successes), int(n), alpha=1 - LEVEL, method="wilson")
    return estimate(successes / n, n, lo, hi, "wilson")


def bootstrap(statistic, *samples, seed: int = 0, value=None, level: float = LEVEL) -> dict:
    """statistic(*samples) with a seeded percentile bootstrap interval over images (samples are
    resampled together: paired). statistic must accept an `axis` keyword (scipy's vectorised form).
    `level`: the interval's confidence (above 95% where several are tested at once)."""
    from scipy.stats import bootstrap as sp_bootstrap
    samples = [np.asarray(s, dtype=np.float64) for s in samples]
    n = len(samples[0]) if samples else 0
    value = statistic(*samples, axis=-1) if value is None and n else value
    if n < MIN_BOOTSTRAP_N:
        return estimate(value, n, method="bootstrap",
                        note=f"{n} images: too few for an interval (at least {MIN_BOOTSTRAP_N})")
    if all(np.ptp(s) == 0 for s in samples):  # every image the same: no spread to resample
        return estimate(value, n, value, value, "bootstrap")
    res = sp_bootstrap(samples, statistic, n_resamples=RESAMPLES, confidence_level=level, method="percentile",
                       paired=True, vectorized=True, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return estimate(value, n, ci.low, ci.high, "bootstrap")


def two_sample_bootstrap(statistic, a, b, seed: int = 0, batch: int | None = None) -> dict:
    """statistic(a, b) of two sets of different images (e.g. in-distribution and shifted) with a seeded percentile
    bootstrap interval, each set resampled on its own (scipy.stats.bootstrap, paired=False); n is both sets' size.
    statistic must accept an `axis` keyword; `batch` resamples at a time bounds the memory."""
    from scipy.stats import bootstrap as sp_bootstrap
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    value = float(statistic(a, b, axis=-1))
    small = min(len(a), len(b))
    if small < MIN_BOOTSTRAP_N:
        return estimate(value, len(a) + len(b), method="bootstrap",
                        note=f"{small} images in the smaller set: too few for an interval (at least {MIN_BOOTSTRAP_N})")
    res = sp_bootstrap((a, b), statistic, n_resamples=RESAMPLES, confidence_level=LEVEL, method="percentile",
                       paired=False, vectorized=True, batch=batch, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return estimate(value, len(a) + len(b), ci.low, ci.high, "bootstrap")


def _mean(*s, axis=-1):
    return np.mean(s[0], axis=axis)


def mean(values, seed: int = 0) -> dict:
    """Mean over images with its bootstrap interval."""
    return bootstrap(_mean, values, seed=seed)


def _mean_diff(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_difference(a, b, seed: int = 0, level: float = LEVEL) -> dict:
    """mean(a) - mean(b) over the same images, with a paired bootstrap interval."""
    return bootstrap(_mean_diff, a, b, seed=seed, level=level)


def mcnemar_p(a_correct, b_correct) -> float | None:
    """McNemar's exact test that two classifiers on the same images are equally accurate (p-value)."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if len(a) == 0 or len(a) != len(b):
        return None
    from statsmodels.stats.contingency_tables import mcnemar
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    if table[0][1] + table[1][0] == 0:
        return 1.0
    return float(mcnemar(table, exact=True).pvalue)


def straddles(est: dict, threshold: float) -> bool:
    """Whether the interval holds the threshold (a missing bound of a one-sided interval is unbounded)."""
    if est["ci_low"] is None and est["ci_high"] is None:
        return False
    lo = -math.inf if est["ci_low"] is None else est["ci_low"]
    hi = math.inf if est["ci_high"] is None else est["ci_high"]
    return lo < threshold < hi


def more_images(est: dict, threshold: float) -> int | None:
    """About how many more images would make the interval clear `threshold`, assuming the value stays
    where it is and the half-width shrinks as 1/sqrt(n). None: the value sits on the threshold."""
    if est["value"] is None or est["ci_low"] is None or est["n"] <= 0:
        return None
    gap = abs(est["value"] - threshold)
    half = est["ci_high"] - est["value"] if threshold > est["value"] else est["value"] - est["ci_low"]
    if gap <= 1e-12 or half <= 0:
        return None
    need = math.ceil(est["n"] * (half / gap) ** 2)
    return max(need - est["n"], 1)


def _kappa(a, b, axis=-1):
    """Cohen's kappa of two right/wrong vectors (Geirhos et al. 2020's error consistency): observed
    agreement beyond what the two accuracies alone predict."""
    pa, pb = np.mean(a, axis=axis), np.mean(b, axis=axis)
    observed = np.mean(a == b, axis=axis)
    expected = pa * pb + (1 - pa) * (1 - pb)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (observed - expected) / (1 - expected)


def error_consistency(a_correct, b_correct, seed: int = 0) -> dict:
    """Error consistency of two models on the same images (Geirhos et al. 2020): Cohen's kappa of their
    right/wrong decisions with a paired bootstrap interval, plus the observed and the expected consistency.
    Undefined (None) when both models are right on every image or wrong on every image."""
    a, b = np.asarray(a_correct, float), np.asarray(b_correct, float)
    pa, pb = a.mean() if len(a) else 0.0, b.mean() if len(b) else 0.0
    expected = pa * pb + (1 - pa) * (1 - pb)
    if not len(a) or expected >= 1 - 1e-12:
        est = estimate(None, len(a), method="bootstrap", note="both models right (or both wrong) on every image: "
                                                             "kappa is undefined")
    else:
        est = bootstrap(_kappa, a, b, seed=seed)
    return {**est, "observed": float(np.mean(a == b)) if len(a) else None, "expected": float(expected)}


def gap_interval(k_a: int, n_a: int, k_b: int, n_b: int, alpha: float) -> tuple[float, float]:
    """Newcombe's interval of accuracy(a) - accuracy(b) (independent proportions; statsmodels)."""
    from statsmodels.stats.proportion import confint_proportions_2indep
    lo, hi = confint_proportions_2indep(k_a, n_a, k_b, n_b, method="newcomb", compare="diff", alpha=alpha)
    return float(lo), float(hi)
