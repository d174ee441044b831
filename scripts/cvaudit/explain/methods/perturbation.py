"""Perturbation methods (occlusion, LIME, the SHAP family: partition, Kernel SHAP, Shapley value sampling) and the random map every method's faithfulness must beat."""
from __future__ import annotations

import itertools
import sys

import numpy as np
import torch
from torch import nn

from cvaudit import CvauditError
from cvaudit.explain.methods.base import AttributionMethod, Completeness
from cvaudit.net.pixel_space import blur, image_generator


class Occlusion(AttributionMethod):
    name, label, kind = "occlusion", "Occlusion", "perturbation"
    defaults = {"window": 0, "stride": 0}
    reads = ("Zeiler & Fergus: a grey square slides over the image and the drop in the class probability is "
             "recorded; bright where hiding the region hurts the prediction. Window and stride set in config.")

    def geometry(self, h, w):
        win = self.options["window"] or max(2, min(h, w) // 4)
        stride = self.options["stride"] or max(1, win // 2)
        return win, stride

    def model_passes(self, h, w):
        win, s = self.geometry(h, w)
        return ((h - win) // s + 1) * ((w - win) // s + 1) + 1

    def attribute(self, net, x, target):
        from captum.attr import Occlusion as CaptumOcclusion
        win, stride = self.geometry(*x.shape[-2:])

        def prob(inp):
            return torch.softmax(net(inp).float(), 1)

        occ = CaptumOcclusion(prob)
        per_eval = max(1, self.batch_size // len(x))
        attr = occ.attribute(x, sliding_window_shapes=(x.shape[1], win, win), strides=(x.shape[1], stride, stride),
                             baselines=0.5, target=target, perturbations_per_eval=per_eval)
        return attr.mean(1).detach()


def superpixels(img: np.ndarray, n: int) -> np.ndarray:
    """SLIC superpixels (scikit-image); a regular grid of about n cells when SLIC finds far fewer (tiny or
    noise-like images, where LIME would otherwise have a single segment and nothing to weigh)."""
    from skimage.segmentation import slic

    seg = slic(img, n_segments=n, compactness=10, start_label=0)
    if np.unique(seg).size >= max(2, n // 4):
        return seg
    h, w = seg.shape
    k = max(1, int(round(np.sqrt(n))))
    rows, cols = np.minimum(np.arange(h) * k // h, k - 1), np.minimum(np.arange(w) * k // w, k - 1)
    return rows[:, None] * k + cols[None, :]


def target_probability_fn(net: nn.Module, target: int):
    """numpy images (B, H, W, 3) in [0, 1] -> probability of `target` only, (B, 1): what lime and shap
    call, so they fit one output instead of all (an ImageNet head has 1000)."""
    dev = next(itertools.chain(net.parameters(), net.buffers())).device  # an export has buffers alone

    def predict(batch):
        xb = torch.from_numpy(np.ascontiguousarray(batch)).float().permute(0, 3, 1, 2).to(dev)
        with torch.no_grad():
            return torch.softmax(net(xb).float(), 1)[:, [target]].cpu().numpy()
    return predict


class LIME(AttributionMethod):
    name, label, kind = "lime", "LIME", "perturbation"
    defaults = {"samples": 128, "segments": 40, "seed": 0, "hide_color": "mean", "check_samples": 64}
    reads = ("Ribeiro et al.: the image is cut into superpixels, random subsets are hidden (each filled with its "
             "own mean colour by default: explain.lime.hide_color), and a weighted linear model of the class "
             "probability is fitted; each superpixel gets its coefficient. The fit is checked on fresh samples "
             "(R², flagged below 0.5): a surrogate that does not predict the model does not explain it.")
    HIDE = {"grey": 0.5, "black": 0.0}

    def __init__(self, batch_size: int = 64, **options):
        super().__init__(batch_size, **options)
        self.records: list[dict] = []  # per image explained: the surrogate's R² on fresh samples and its own score

    def model_passes(self, h, w):
        return self.options["samples"] + self.options["check_samples"]

    def attribute(self, net, x, target):
        from lime import lime_image

        out = []
        hide = self.options["hide_color"]
        if hide not in ("mean", *self.HIDE):
            raise CvauditError(f"config key explain.lime.hide_color: '{hide}'; use mean, grey or black")
        for img, t in zip(x.detach().cpu().permute(0, 2, 3, 1).double().numpy(), target.tolist()):
            predict = target_probability_fn(net, t)
            seg = lambda im: superpixels(im, self.options["segments"])  # noqa: E731
            explainer = lime_image.LimeImageExplainer(random_state=self.options["seed"])
            exp = explainer.explain_instance(img, predict, labels=(0,), top_labels=None,
                                             hide_color=None if hide == "mean" else self.HIDE[hide],
                                             num_samples=self.options["samples"], batch_size=self.batch_size,
                                             segmentation_fn=seg)
            weights = np.zeros(exp.segments.max() + 1)
            for segment, w in exp.local_exp[0]:
                weights[segment] = w
            out.append(weights[exp.segments])
            self.records.append({"r2_fresh": self.fresh_r2(img, exp.segments, weights, exp.intercept[0], predict, hide),
                                 "r2_own": float(exp.score[0] if isinstance(exp.score, dict) else exp.score)})
        return torch.tensor(np.stack(out), dtype=torch.float32)

    def fresh_r2(self, img, segments, weights, intercept, predict, hide) -> float:
        """R² of the surrogate on perturbations it was not fitted on, weighted by LIME's own kernel (cosine
        distance to the full image, width 0.25): LIME's own score is measured on its training samples."""
        from sklearn.metrics import r2_score
        n_seg, k = int(segments.max()) + 1, self.options["check_samples"]
        if k < 2:
            return float("nan")
        fill = np.zeros_like(img) + (self.HIDE.get(hide, 0.0))
        if hide == "mean":
            for s in range(n_seg):
                fill[segments == s] = img[segments == s].mean(0)
        rng = np.random.default_rng(int(self.options["seed"]) + 1)
        z = rng.integers(0, 2, (k, n_seg))
        batch = np.where(z[:, segments][..., None].astype(bool), img[None], fill[None])
        y = np.concatenate([predict(batch[i:i + self.batch_size]) for i in range(0, k, self.batch_size)])[:, 0]
        d = 1 - z.sum(1) / np.sqrt(np.maximum(z.sum(1), 1) * n_seg)  # cosine distance to all-ones
        w = np.sqrt(np.exp(-(d ** 2) / 0.25 ** 2))
        return float(r2_score(y, intercept + z @ weights, sample_weight=w)) if np.ptp(y) > 0 else float("nan")


# functions that numba cannot cache: recursive ones (lower_credit), those that take another jitted function
# as an argument (shap's link) and the links themselves: loaded from a cache they crash the process
_SHAP_UNCACHEABLE = {"_build_fixed_multi_output", "identity", "logit", "lower_credit"}


def _shap():
    """shap, with its numba functions cached on disk: shap compiles them in every process that explains
    (about 10 s of a SHAP job on this machine, more than the model's own work at 28 px) and does not ask
    numba to cache them. Those numba can cache save about 3 s; the rest (_SHAP_UNCACHEABLE) still compile.
    The cache holds the same machine code numba would compile; it lives in numba's cache directory
    (__pycache__ beside shap, or NUMBA_CACHE_DIR) and is rebuilt when shap changes."""
    import shap
    from numba.core.dispatcher import Dispatcher

    for name, module in list(sys.modules.items()):
        if name.startswith("shap.") and module is not None:
            for f in vars(module).values():
                if (isinstance(f, Dispatcher) and type(getattr(f, "_cache", None)).__name__ == "NullCache"
                        and f.__name__ not in _SHAP_UNCACHEABLE):
                    try:
                        f.enable_caching()
                    except Exception:  # noqa: BLE001 — a speed-up only: without it numba compiles as shap asks
                        pass
    return shap


class SHAP(Completeness, AttributionMethod):
    name, label, kind = "shap", "SHAP (partition)", "perturbation"
    defaults = {"evals": "auto", "tolerance": 0.05}
    promise = "its values sum to p(x) − p(fully blurred image)"
    caveat = "shap's partition explainer keeps this by construction; a miss means the model's output is not deterministic"
    reads = ("Lundberg & Lee, Partition explainer: Shapley values of a hierarchy of image regions, hidden regions "
             "replaced by a blurred copy; the values of a map add up to the class probability minus that of the "
             "fully blurred image.")

    def evals(self, h: int, w: int) -> int:
        e = self.options["evals"]
        return max(128, h * w // 49) if e == "auto" else int(e)

    def model_passes(self, h, w):
        return self.evals(h, w)

    def attribute(self, net, x, target):
        shap = _shap()
        imgs = x.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.float64)
        blurred = blur(x.detach().cpu(), max(x.shape[-1] / 16, 1.0)).permute(0, 2, 3, 1).numpy()
        cache = self.__dict__.setdefault("_maskers", {})
        if imgs.shape[1:] not in cache:  # its partition tree takes ~0.7 s for a 224 px image: build it once
            cache[imgs.shape[1:]] = shap.maskers.Image(np.zeros(imgs.shape[1:]), imgs.shape[1:])
        masker = cache[imgs.shape[1:]]
        out, total, expected = [], [], []
        for img, soft, t in zip(imgs, blurred, target.tolist()):
            masker.mask_value = soft.astype(np.float64).ravel()  # blur without OpenCV, one partition tree
            explainer = shap.Explainer(target_probability_fn(net, t), masker, algorithm="partition")
            sv = explainer(img[None], max_evals=self.evals(*img.shape[:2]), batch_size=self.batch_size, silent=True)
            out.append(sv.values[0, ..., 0].sum(-1))
            total.append(sv.values[0, ..., 0].sum())
            expected.append(explainer.model(img[None])[0, 0] - np.ravel(sv.base_values)[0])
        self.check(torch.tensor(total), torch.tensor(expected))
        return torch.tensor(np.stack(out), dtype=torch.float32)


class ShapleySampling(Completeness, AttributionMethod):
    """Shapley values of the LIME superpixels through captum's ShapleyValueSampling (Strumbelj & Kononenko's
    permutation sampling): `samples` random orders of the superpixels, each adding them one at a time to the
    baseline (every superpixel filled with its own mean colour, as LIME hides it) and crediting each with the
    change in the class probability. Each order telescopes, so the values sum exactly to p(x) - p(baseline)
    (efficiency). Each image's orders come from its own seed, so a map does not depend on its batch."""
    name, label, kind = "shapley_sampling", "Shapley value sampling", "perturbation"
    defaults = {"samples": 8, "segments": 40, "seed": 0, "tolerance": 0.01}
    reads = ("Strumbelj & Kononenko / Lundberg & Lee's Shapley sampling values: each superpixel's average effect on "
             "the class probability when it is revealed, over random orders; the values add up to the probability "
             "minus that of the image with every superpixel filled with its mean colour.")
    promise = "its values sum to p(x) − p(every superpixel filled with its mean colour)"
    caveat = "permutation sampling keeps this exactly; a miss means the model's output is not deterministic"

    def model_passes(self, h, w):
        return int(self.options["samples"]) * (int(self.options["segments"]) + 1)

    def _explainer(self, prob):
        from captum.attr import ShapleyValueSampling
        return ShapleyValueSampling(prob)

    def attribute(self, net, x, target):
        from cvaudit.net.pixel_space import image_seed

        def prob(inp):
            return torch.softmax(net(inp).float(), 1)

        index = getattr(self, "index", None)
        index = range(len(x)) if index is None else [int(i) for i in index]
        out, total, expected = [], [], []
        for k, j in zip(range(len(x)), index):
            xi, ti = x[k:k + 1], target[k:k + 1]
            img = xi[0].detach().permute(1, 2, 0).cpu().double().numpy()
            seg = np.unique(superpixels(img, int(self.options["segments"])), return_inverse=True)[1].reshape(img.shape[:2])
            mask = torch.from_numpy(seg).to(x.device).view(1, 1, *seg.shape)
            fill = torch.zeros_like(xi)
            for s in range(int(seg.max()) + 1):  # each superpixel's own mean colour, as LIME hides it
                sel = (mask[0, 0] == s)
                fill[0, :, sel] = xi[0, :, sel].mean(1, keepdim=True)
            with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
                torch.manual_seed(image_seed(int(self.options["seed"]), j))
                a = self._explainer(prob).attribute(xi, baselines=fill, target=ti,
                                                    feature_mask=mask.expand_as(xi).contiguous(),
                                                    perturbations_per_eval=max(1, self.batch_size), show_progress=False,
                                                    n_samples=int(self.options["samples"]))
            values = torch.stack([a[0, 0][mask[0, 0] == s][0] for s in range(int(seg.max()) + 1)])
            with torch.no_grad():
                p = prob(torch.cat([xi, fill]))[:, int(ti)]
            total.append(values.sum())
            expected.append(p[0] - p[1])
            out.append(a[0, 0].detach())
        self.check(torch.stack(total), torch.stack(expected))
        return torch.stack(out).float()


class KernelShap(ShapleySampling):
    """Lundberg & Lee's Kernel SHAP through captum's KernelShap on the same superpixels and baseline: a
    weighted linear model of the class probability on `samples` coalitions drawn from the Shapley kernel.
    Local accuracy (the values sum to p(x) - p(baseline)) is kept by captum's regression, which gives the
    full and the empty coalition a weight of 10^6; the check confirms it per image."""
    name, label = "kernel_shap", "Kernel SHAP"
    defaults = {"samples": 256, "segments": 40, "seed": 0, "tolerance": 0.05}
    reads = ("Lundberg & Lee: Shapley values of the superpixels estimated by a weighted linear regression on random "
             "coalitions (hidden superpixels filled with their mean colour); they add up to the probability minus "
             "that of the fully hidden image.")
    caveat = ("captum's regression keeps it only through a large weight on the full and the empty coalition, so a miss "
              "means the fit failed: raise explain.kernel_shap.samples")

    def model_passes(self, h, w):
        return int(self.options["samples"])

    def _explainer(self, prob):
        from captum.attr import KernelShap as CaptumKernelShap
        return CaptumKernelShap(prob)


class RandomMap(AttributionMethod):
    name, label, kind = "random", "Random map (floor)", "reference"
    reads = "Seeded noise that ignores the model: the floor every method's faithfulness must beat."

    def model_passes(self, h, w):
        return 0

    def attribute(self, net, x, target):
        index = getattr(self, "index", None)
        index = range(len(x)) if index is None else index.tolist()
        seed = int(self.options.get("seed", 0))
        return torch.stack([torch.rand(tuple(x.shape[-2:]), generator=image_generator(seed, j)) for j in index])
