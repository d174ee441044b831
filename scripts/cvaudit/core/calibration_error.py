"""Expected calibration error (Guo et al. 2017) over equal-width confidence bins, with its bootstrap
interval: the one definition the calibrate, slices, corruptions and shift stages and the comparison share."""
from __future__ import annotations

import numpy as np

from cvaudit.core import stats


def bin_gaps(conf, correct, which, bins, axis=-1):
    """sum over bins of |accuracy - confidence| weighted by the bin's share (works on resampled rows)."""
    conf, correct, which = np.atleast_2d(conf), np.atleast_2d(correct), np.atleast_2d(which).astype(int)
    n = conf.shape[-1]
    out = np.zeros(conf.shape[0])
    for b in range(bins):
        m = which == b
        cnt = m.sum(-1)
        gap = np.abs((correct * m).sum(-1) - (conf * m).sum(-1))  # = count * |acc - conf| of the bin
        out += np.where(cnt > 0, gap, 0.0) / n
    return out


def bin_of(conf, bins: int) -> np.ndarray:
    """The equal-width confidence bin (0 .. bins - 1) of each confidence; a confidence on an edge goes below it."""
    return np.clip(np.digitize(conf, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1)


def ece(conf, correct, bins: int = 15, axis=-1) -> np.ndarray:
    """ECE over equal-width bins from each image's top confidence and whether it was right; one value per row
    of resampled images (stats.bootstrap's vectorised form)."""
    return bin_gaps(conf, correct, bin_of(conf, bins), bins)


def ece_estimate(conf, correct, bins: int = 15, seed: int = 0, value: float | None = None) -> dict:
    """ECE over equal-width confidence bins from each image's top confidence and whether it was right, with
    its bootstrap interval over images (stats.bootstrap)."""
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, np.float64)
    if not len(conf):
        return stats.estimate(None, 0, method="bootstrap", note="no images")
    which = bin_of(conf, bins)
    value = float(bin_gaps(conf, correct, which, bins)[0]) if value is None else value
    return stats.bootstrap(lambda c, k, w, axis=-1: bin_gaps(c, k, w, bins), conf, correct, which, seed=seed,
                           value=value)
