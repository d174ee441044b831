"""Global cues: a shortcut with no place in the image (one class's training images brighter, of higher
contrast, blurrier or noisier, tinted, or with a lighter border), which no attribution map can point to.

Metadata-free: for each class, each image property below is compared between the class's training images
and the other classes' (standardised mean difference, Cohen's d). A property on which a class stands out by
at least `min_effect` is a suspect, tested by a counterfactual on held-out images: test images of other
classes have the property moved to the class's mean (the *shift*), and the share now predicted as the class
is the shift flip rate; the same images moved as far the other way are the control. A model that merely
reacts to any change of the property flips as often both ways; one that learnt the property as the class
flips towards it. The rates are paired (the same images), so their difference carries a paired bootstrap
interval, and the verdict reads it (cvaudit.report.shortcut_checks.shortcut_suspected).

Each property has a measure and a one-parameter transform whose strength is found by bisection so that the
shifted images' mean measure meets the target (the transforms are monotone in their strength):
brightness (mean grey; add a constant), contrast (standard deviation of grey; scale about the image's mean),
sharpness (variance of the Laplacian of grey; Gaussian blur one way, Gaussian noise the other), border (mean
grey of the outermost eighth; add a constant there) and, for colour images, red/green/blue (a channel's mean
minus the grey mean; add a constant to that channel).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GREY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (x * GREY.to(x)).sum(1, keepdim=True)


def _ring(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    k = max(1, min(h, w) // 8)
    m = torch.ones(h, w, dtype=torch.bool, device=x.device)
    m[k:h - k, k:w - k] = False
    return m


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _noise(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g).to(x)).clamp(0, 1)


def measure(name: str, x: torch.Tensor) -> torch.Tensor:
    """The property `name` of each image of x (N, 3, H, W) in [0, 1]."""
    g = _grey(x)
    if name == "brightness":
        return g.mean((1, 2, 3))
    if name == "contrast":
        return g.std((1, 2, 3))
    if name == "sharpness":
        return F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), LAPLACE.to(g)).var((1, 2, 3))
    if name == "border":
        return g[:, 0][:, _ring(x)].mean(1)
    channel = {"red": 0, "green": 1, "blue": 2}[name]
    return x[:, channel].mean((1, 2)) - g.mean((1, 2, 3))


def transform(name: str, x: torch.Tensor, s: float, seed: int = 0) -> torch.Tensor:
    """x with property `name` moved by strength s (signed; 0 leaves x as it is)."""
    if name == "brightness":
        return (x + s).clamp(0, 1)
    if name == "contrast":
        m = _grey(x).mean((1, 2, 3), keepdim=True)
        return (m + (x - m) * np.exp(s)).clamp(0, 1)
    if name == "sharpness":  # s < 0: blur of sigma -s px; s > 0: noise of sigma s / 10
        return _blur(x, -s) if s < 0 else _noise(x, s / 10, seed)
    if name == "border":
        out = x.clone()
        ring = _ring(x)
        out[..., ring] = (out[..., ring] + s).clamp(0, 1)
        return out
    out = x.clone()
    c = {"red": 0, "green": 1, "blue": 2}[name]
    out[:, c] = (out[:, c] + s).clamp(0, 1)
    return out


RANGES = {"brightness": (-1.0, 1.0), "contrast": (-3.0, 3.0), "sharpness": (-4.0, 4.0), "border": (-1.0, 1.0),
          "red": (-1.0, 1.0), "green": (-1.0, 1.0), "blue": (-1.0, 1.0)}


def properties_for(x: torch.Tensor) -> list[str]:
    """The properties that mean something for these images (colour channels only for colour images)."""
    names = ["brightness", "contrast", "sharpness", "border"]
    spread = (x.max(1).values - x.min(1).values).amax()
    return names + (["red", "green", "blue"] if float(spread) > 2 / 255 else [])


def strength_for(name: str, x: torch.Tensor, target: float, seed: int = 0, steps: int = 14) -> tuple[float, float]:
    """(strength, the mean measure it reaches): bisection for the strength whose transform brings the mean
    measure of x closest to `target` (the transforms are monotone in their strength)."""
    lo, hi = RANGES[name]
    at = lambda s: float(measure(name, transform(name, x, s, seed)).mean())  # noqa: E731
    f_lo, f_hi = at(lo), at(hi)
    if (target <= f_lo) if f_lo <= f_hi else (target >= f_lo):
        return lo, f_lo
    if (target >= f_hi) if f_lo <= f_hi else (target <= f_hi):
        return hi, f_hi
    up = f_hi > f_lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        if (at(mid) < target) == up:
            lo = mid
        else:
            hi = mid
    s = (lo + hi) / 2
    return s, at(s)


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Standardised mean difference of a against b (pooled standard deviation); 0 when neither varies."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return 0.0
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    if pooled <= 1e-12:
        return 0.0 if abs(a.mean() - b.mean()) <= 1e-12 else float(np.sign(a.mean() - b.mean()) * np.inf)
    return float((a.mean() - b.mean()) / pooled)


def suspects(x_train: torch.Tensor, y_train: np.ndarray, n_classes: int, min_effect: float) -> list[dict]:
    """Every (class, property) on which the class's training images stand out from the other classes' by a
    standardised difference of at least `min_effect`, strongest first."""
    out = []
    for name in properties_for(x_train):
        values = measure(name, x_train).double().numpy()
        for c in range(n_classes):
            inside, rest = values[y_train == c], values[y_train != c]
            d = cohens_d(inside, rest)
            if len(inside) >= 2 and abs(d) >= min_effect:
                out.append({"property": name, "class_index": c, "effect": d, "class_mean": float(inside.mean()),
                            "others_mean": float(rest.mean()), "n_class": int(len(inside)), "n_others": int(len(rest))})
    return sorted(out, key=lambda s: -abs(s["effect"]))
