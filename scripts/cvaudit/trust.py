"""How far an attribution map can be trusted.

- Faithfulness (Petsiuk et al., RISE): deletion removes the most salient pixels first and insertion
  reveals them on a blurred copy; the area under the class-probability curve is low for a faithful map
  under deletion and high under insertion. With RISE's substrates (the default, as in the authors'
  evaluation code): deleted pixels become the normalised zero (the model's mean colour), insertion
  starts from an 11x11, sigma 5 blur padded with that zero. Steps are `steps` equal shares of the
  pixels (RISE: 224 pixels a step, which at 224 px is 224 steps a curve).
- Sanity (Adebayo et al.): cascading randomisation of the model's parameters from the top layer down;
  a map that barely changes does not depend on what the model learned.
- Agreement: rank correlation between the maps of two methods on the same images.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .methods import attribute_batched
from .pixels import blur, class_probability, image_generator, inner


def _order(maps: torch.Tensor, seed: int, index=None) -> torch.Tensor:
    """Pixels from most to least salient, a total order: ties (the zeros of a ReLU'd map, LIME's
    superpixels) go by a seeded random key, never by raster order (which would favour the top of the
    image) nor by whatever order an unstable sort leaves (which varies across platforms and versions).
    A random permutation first, then a stable sort by value: a lexicographic sort on (value, key)."""
    flat = maps.reshape(len(maps), -1).float()
    index = range(len(flat)) if index is None else index
    out = torch.empty(flat.shape, dtype=torch.long)
    for row, j in enumerate(index):
        perm = torch.randperm(flat.shape[1], generator=image_generator(seed, j))
        out[row] = perm[torch.argsort(-flat[row, perm], stable=True)]
    return out


SUBSTRATES = ("rise", "black_blur")


def rise_kernel(klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's blur kernel (gkern in the authors' evaluation code): a unit impulse smoothed by
    scipy.ndimage.gaussian_filter (its reflecting edges keep the sum at 1)."""
    from scipy.ndimage import gaussian_filter
    impulse = np.zeros((klen, klen))
    impulse[klen // 2, klen // 2] = 1
    return torch.as_tensor(gaussian_filter(impulse, sigma), dtype=torch.float32)


def substrates(net: nn.Module, x: torch.Tensor, substrate: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(what deletion turns pixels into, what insertion starts from), in pixel space."""
    if substrate == "black_blur":  # cvaudit before RISE's: black, and a sigma W/16 blur with reflected edges
        return torch.zeros_like(x), blur(x, max(x.shape[-1] / 16, 1.0))
    mean = getattr(net, "mean", None)
    mean = torch.zeros(1, x.shape[1], 1, 1, device=x.device) if mean is None else mean.to(x.device)
    k = rise_kernel().to(x.device)
    kern = k.expand(x.shape[1], 1, *k.shape)
    # RISE blurs the normalised image with zero padding: in pixel space, (x - mean) blurred, plus mean
    blurred = F.conv2d(x - mean, kern, padding=k.shape[-1] // 2, groups=x.shape[1]) + mean
    return mean.expand_as(x).clone(), blurred


def deletion_insertion(net: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, steps: int = 16,
                       batch_size: int = 64, seed: int = 0, index=None, substrate: str = "rise") -> dict:
    """Deletion and insertion curves (N, steps + 1) of the target-class probability, and their AUCs.
    index: the images' positions in the whole audit set (seeds their tie-breaking; default 0..N-1)."""
    n, _, h, w = x.shape
    order = _order(maps, seed, index).to(x.device)
    counts = np.linspace(0, h * w, steps + 1).round().astype(int)
    empty, blurred = substrates(net, x, substrate)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    dele, ins = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
    group = max(1, batch_size // (2 * (steps + 1)))
    for i in range(0, n, group):
        sl = slice(i, i + group)
        r = rank[sl].view(-1, 1, 1, h, w)  # (g, 1, 1, h, w)
        k = torch.as_tensor(counts, device=x.device).view(1, -1, 1, 1, 1)
        mask = (r < k).float()  # (g, steps+1, 1, h, w): 1 = among the top-k salient pixels
        xi, bi, ei = x[sl, None], blurred[sl, None], empty[sl, None]
        deleted = xi * (1 - mask) + ei * mask
        inserted = bi * (1 - mask) + xi * mask
        batch = torch.cat([deleted, inserted], 1).flatten(0, 1)
        t = target[sl].repeat_interleave(2 * (steps + 1))
        p = class_probability(net, batch, t, batch_size).view(-1, 2, steps + 1).cpu().numpy()
        dele[sl], ins[sl] = p[:, 0], p[:, 1]
    frac = counts / (h * w)
    return {"deletion": dele, "insertion": ins, "fractions": frac,
            "deletion_auc": np.trapezoid(dele, frac, axis=1), "insertion_auc": np.trapezoid(ins, frac, axis=1)}


def _small(a: np.ndarray, size: int = 28) -> np.ndarray:
    t = torch.as_tensor(np.nan_to_num(np.asarray(a, dtype=np.float32)))[:, None]
    if t.shape[-1] > size:
        t = F.adaptive_avg_pool2d(t, size)
    return t[:, 0].reshape(len(t), -1).numpy()


def rank_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per image between two stacks of maps (N, H, W), on a coarse grid
    (at most 28 x 28) so that pixel noise does not dominate; NaN-free (constant maps give 0)."""
    from scipy.stats import spearmanr  # scipy.stats: most of a second to import, for the jobs that rank
    a, b = _small(a), _small(b)
    out = []
    for u, v in zip(a, b):
        if np.ptp(u) == 0 or np.ptp(v) == 0:
            out.append(0.0)
        else:
            out.append(float(spearmanr(u, v).statistic))
    return np.array(out)


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters, in forward (definition) order."""
    return [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def cascade_cuts(n_layers: int, stages: int) -> list[int]:
    """How many top layers are randomised at each stage: the head alone first, the whole model last."""
    if stages <= 1:
        return [n_layers]
    cuts = [1] + [int(round(n_layers * k / (stages - 1))) for k in range(1, stages)]
    return sorted(set(max(1, min(n_layers, c)) for c in cuts))


def _randomise(m: nn.Module) -> None:
    if hasattr(m, "reset_parameters"):
        m.reset_parameters()
    else:
        for p in m.parameters(recurse=False):
            nn.init.normal_(p, std=0.02)


def cascading_randomisation(method, net: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: np.ndarray,
                            stages: int = 3, seed: int = 0) -> dict:
    """Rank correlation (of |map|) between the trained model's maps and those of copies whose top
    layers are re-initialised, cumulatively from the head down."""
    rand = copy.deepcopy(net)
    layers = parameter_layers(inner(rand))[::-1]  # top first
    done, out = 0, []
    for k, cut in enumerate(cascade_cuts(len(layers), stages)):
        torch.manual_seed(seed + k)
        for _, m in layers[done:cut]:
            _randomise(m)
        done = cut
        rmaps = attribute_batched(method, rand.eval(), x, target)
        corr = rank_corr(np.abs(maps), np.abs(rmaps))
        out.append({"randomised_layers": cut, "of": len(layers), "down_to": layers[cut - 1][0],
                    "rank_corr": float(corr.mean()), "per_image": corr.tolist()})
    return {"stages": out, "final_rank_corr": out[-1]["rank_corr"] if out else None}


def agreement(maps: dict[str, np.ndarray]) -> dict:
    """Mean rank correlation between every pair of methods' maps over the same images."""
    names = list(maps)
    m = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            m[i, j] = m[j, i] = float(rank_corr(maps[a], maps[names[j]]).mean())
    return {"methods": names, "matrix": m.tolist()}
