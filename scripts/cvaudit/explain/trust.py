"""How far an attribution map can be trusted.

- Faithfulness (Petsiuk et al., RISE): deletion removes the most salient pixels first and insertion
  reveals them on a blurred copy; the area under the class-probability curve is low for a faithful map
  under deletion and high under insertion. With RISE's substrates (the default, as in the authors'
  evaluation code): deleted pixels become the normalised zero (the model's mean colour), insertion
  starts from an 11x11, sigma 5 blur padded with that zero. Steps are `steps` equal shares of the
  pixels (RISE: 224 pixels a step, which at 224 px is 224 steps a curve).
- Sanity (Adebayo et al.): cascading randomisation of the model's parameters from the top layer down;
  a map that barely changes does not depend on what the model learned.
- Class sensitivity (Sixt et al. 2020): the random-logit test, each image explained for a random other
  class; a map that barely changes does not depend on the class it explains.
- Explanation robustness (Yeh et al. 2019): captum's max-sensitivity, the largest relative change of a
  map under small uniform input noise.
- ROAD (Rong et al. 2022): faithfulness without the deletion curve's artefact: removed pixels are filled
  by noisy linear imputation (pytorch-grad-cam's implementation), so the mask's shape leaks no class.
- Agreement: rank correlation between the maps of two methods on the same images.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvaudit.explain.methods import attribute_batched
from cvaudit.net.pixel_space import blur, class_probability, image_generator, image_seed, inner


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


def other_classes(target: torch.Tensor, n_classes: int, seed: int, index) -> torch.Tensor:
    """A class other than each image's own, drawn uniformly with the image's own seed."""
    out = []
    for t, j in zip(target.tolist(), index):
        k = int(torch.randint(n_classes - 1, (1,), generator=image_generator(seed + 1, int(j))))
        out.append(k + (k >= t))
    return torch.tensor(out, dtype=torch.long, device=target.device)


def random_logit(method, net: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: np.ndarray,
                 n_classes: int, seed: int = 0, index=None) -> dict | None:
    """The random-logit test (Sixt et al. 2020, "When explanations lie"): each image explained again for
    a random other class; the rank correlation with its map for the explained class. Near 1, the map
    does not depend on which class it explains (it shows the image, or what every class shares)."""
    if n_classes < 2 or len(x) == 0:
        return None
    index = list(range(len(x))) if index is None else list(index)
    other = other_classes(target, n_classes, seed, index)
    omaps = attribute_batched(method, net, x, other, torch.tensor(index))
    corr = rank_corr(maps, omaps)
    return {"rank_corr": float(corr.mean()), "per_image": corr.tolist(), "classes": other.tolist()}


def max_sensitivity(method, net: nn.Module, x: torch.Tensor, target: torch.Tensor, radius: float, samples: int,
                    seed: int = 0) -> dict | None:
    """Explanation robustness (Yeh et al. 2019): captum's sensitivity_max, the largest relative change of a
    map, ||map(x') - map(x)|| / ||map(x)||, over `samples` inputs x' drawn uniformly within `radius` of x
    (pixel scale, [0, 1]). Each image keeps its own seed, so a seeded method's own noise is not counted."""
    from captum.metrics import sensitivity_max

    if samples < 1 or len(x) == 0:
        return None
    k = len(x)

    def explain(inp, target):
        inp = inp[0] if isinstance(inp, tuple) else inp  # captum hands over a tuple of inputs
        target = torch.as_tensor(target, device=inp.device).reshape(-1)
        if len(target) != len(inp):  # captum does not expand a one-element target
            target = target.repeat_interleave(len(inp) // len(target))
        index = torch.arange(k) if len(inp) == k else torch.arange(k).repeat_interleave(len(inp) // k)
        with torch.enable_grad():  # captum runs this under no_grad; the gradient methods need their graph
            maps = attribute_batched(method, net, inp, target, index)
        return (torch.from_numpy(maps).to(inp.device),)  # and takes a tuple back

    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(seed)
        sens = sensitivity_max(explain, x, target=target, perturb_radius=radius, n_perturb_samples=samples,
                               max_examples_per_batch=k * samples)
    per = sens.detach().double().cpu().numpy()
    return {"median": float(np.median(per)), "per_image": per.tolist(), "radius": radius, "samples": samples}


def _road_metric():
    """pytorch-grad-cam's ROADCombined, imported without running its package's __init__, which imports
    every CAM, its image helpers and matplotlib (2.5 s of a job that uses none of them): a bare package
    module stands in for `pytorch_grad_cam` so that only metrics/road.py and what it imports load."""
    import importlib.util
    import sys
    import types
    if "pytorch_grad_cam" not in sys.modules:
        spec = importlib.util.find_spec("pytorch_grad_cam")
        pkg = types.ModuleType("pytorch_grad_cam")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["pytorch_grad_cam"] = pkg
    from pytorch_grad_cam.metrics.road import ROADCombined
    return ROADCombined


def tie_broken_ranks(m: np.ndarray, seed: int) -> np.ndarray:
    """A map (H, W) as the ranks of its values in [0, 1), equal values in a seeded random order. ROAD removes the
    pixels above a percentile of the map: on a map with many equal values (an upsampled Grad-CAM, a map of zeros)
    the threshold would take all of them at once, whatever the percentile."""
    flat = np.nan_to_num(np.asarray(m, np.float64)).ravel()
    order = np.lexsort((np.random.default_rng(seed).random(flat.size), flat))
    ranks = np.empty(flat.size)
    ranks[order] = np.arange(flat.size) / flat.size
    return ranks.reshape(np.shape(m)).astype(np.float32)


def road(net: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: np.ndarray, percentiles, seed: int = 0,
         index=None, imputations: int = 1) -> np.ndarray:
    """ROAD (Rong et al. 2022, remove and debias) per image, through pytorch-grad-cam's ROADCombined: the
    pixels a map ranks highest (most relevant first) or lowest (least relevant first) are removed at each
    percentile and filled by noisy linear imputation from their neighbours, which leaks no shape of the
    mask; the score is the mean over percentiles of (class probability after removing the least relevant
    - after removing the most relevant) / 2. Higher is better. Each image's imputation noise has its own
    seed, so a score does not depend on its batch or shard; its score is the mean over `imputations` draws of
    that noise, and ties in its map are broken in a seeded order (tie_broken_ranks), so every percentile removes
    that share of the pixels."""
    import warnings
    metric = _road_metric()(percentiles=list(percentiles))
    index = range(len(x)) if index is None else index
    out = []
    for k, j in enumerate(index):
        c = int(target[k])
        ranked = tie_broken_ranks(maps[k], image_seed(seed, int(j)))[None]
        scores = []
        for r in range(imputations):
            with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # numpy's, on the library's np.float32(list of tensors)
                torch.manual_seed(image_seed(seed + 104729 * r, int(j)))
                s = metric(x[k:k + 1], ranked, [lambda o, c=c: torch.softmax(o.float(), -1)[c]], net)
            scores.append(float(np.ravel(s)[0]))
        out.append(float(np.mean(scores)))
    return np.array(out)
