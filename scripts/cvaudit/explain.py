"""Attribution methods behind one interface.

A registry maps each config name to a method whose `attribute(net, x, target)` takes a batch of
images in pixel space ([0, 1], N x 3 x H x W; `net` normalises them itself, see PixelSpace) and
the class to explain for each, and returns maps of shape (N, H, W) where higher means more
evidence for that class. Captum, lime and shap do the work; written here is only what none of
them does: guided backprop / deconvnet for ReLU6 (captum's only override nn.ReLU), CAM, and the
glue that batches every model call.
"""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import CvauditError
from .evaluate import load_audit_set
from .io import load_npz, save_npz
from .models import auto_batch, load_model, resolve_device
from .train import seed_everything

log = logging.getLogger("cvaudit.explain")


class NotApplicable(Exception):
    """The method cannot explain this model (e.g. Grad-CAM on a model without conv layers)."""


class PixelSpace(nn.Module):
    """The model with its input normalisation in front: takes images in [0, 1]."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def pixel_model(model_path, seed: int, device: str, threads: int, frozen: bool = False):
    """A stage's start: seed everything, load the saved model on the device, wrap it in PixelSpace.
    frozen: no parameter needs a gradient (only the input does). Returns model, spec, net, device."""
    seed_everything(seed, threads)
    dev = resolve_device(device)
    model, spec = load_model(model_path, dev)
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    return model, spec, PixelSpace(model, spec["mean"], spec["std"]).to(dev).eval(), dev


def inner(net: nn.Module) -> nn.Module:
    return net.model if isinstance(net, PixelSpace) else net


@torch.no_grad()
def class_probability(net: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Softmax probability of `target` (one class per image, broadcast if one) in batches."""
    out = []
    for i in range(0, len(x), batch_size):
        p = torch.softmax(net(x[i:i + batch_size]).float(), 1)
        t = target[i:i + batch_size] if target.numel() > 1 else target.expand(len(p))
        out.append(p.gather(1, t.view(-1, 1))[:, 0])
    return torch.cat(out)


# ----------------------------------------------------------------------------- registry
class AttributionMethod:
    name = ""
    label = ""
    kind = "gradient"  # gradient | cam | perturbation | reference
    reads = ""  # one sentence for the report: how to read the maps
    defaults: dict = {}

    def __init__(self, batch_size: int = 64, **options):
        self.options = {**self.defaults, **options}
        self.batch_size = batch_size

    def attribute(self, net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def model_passes(self, h: int, w: int) -> int:
        """Model passes per image (forward, or forward + backward for gradient methods)."""
        return 1


METHODS: dict[str, type[AttributionMethod]] = {}


def register(cls):
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **options) -> AttributionMethod:
    if name not in METHODS:
        raise CvauditError(f"unknown attribution method '{name}' (config key explain.methods); "
                           f"available: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)


def _input_grad(net, x, target) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    out = net(x)
    (g,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return g


# ----------------------------------------------------------------------------- gradient methods
@register
class Saliency(AttributionMethod):
    name, label = "saliency", "Vanilla gradient"
    reads = ("Simonyan et al.: the largest absolute gradient of the class score over the colour channels; bright "
             "pixels are those whose small change would most change the score. Noisy by nature.")

    def attribute(self, net, x, target):
        from captum.attr import Saliency as CaptumSaliency
        return CaptumSaliency(net).attribute(x, target=target, abs=True).amax(1).detach()


RELU_FAMILY = (nn.ReLU, nn.ReLU6)
ALLOWED = (nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.Identity)


class ReluBackwardOverride(contextlib.AbstractContextManager):
    """Owns the backward hooks that turn a plain gradient into guided backprop or deconvnet, on every
    ReLU and ReLU6 module, and always removes them (and restores `inplace`) on exit.

    guided: gradient through the rectifier as usual, then only its positive part (Springenberg et al.);
    deconv: only the positive part of the incoming gradient, ignoring the forward mask (Zeiler & Fergus).
    Any other activation module (SiLU, GELU, ...) is refused: its gradient would pass unmodified and
    the result would be a plain gradient under another name.
    """

    def __init__(self, net: nn.Module, mode: str):
        self.net, self.mode, self.handles, self.inplace = net, mode, [], []

    @staticmethod
    def check(net: nn.Module) -> list[nn.Module]:
        relus, other = [], set()
        for m in net.modules():
            if isinstance(m, RELU_FAMILY):
                relus.append(m)
            elif type(m).__module__.startswith(("torch.nn.modules.activation", "timm.layers.activations")) \
                    and not isinstance(m, ALLOWED):
                other.add(type(m).__name__)
        if other:
            raise NotApplicable(f"the model uses {', '.join(sorted(other))} activations; guided backprop and "
                                "deconvnet are defined for ReLU/ReLU6 only")
        if not relus:
            raise NotApplicable("the model has no ReLU/ReLU6 modules to modify")
        return relus

    def __enter__(self):
        for m in self.check(self.net):
            self.inplace.append((m, m.inplace))
            m.inplace = False  # backward hooks cannot see through in-place ops
            if self.mode == "guided":
                hook = lambda mod, gin, gout: (gin[0].clamp(min=0),)  # noqa: E731
            else:
                hook = lambda mod, gin, gout: (gout[0].clamp(min=0),)  # noqa: E731
            self.handles.append(m.register_full_backward_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        for m, flag in self.inplace:
            m.inplace = flag
        self.handles, self.inplace = [], []
        return False


@register
class GuidedBackprop(AttributionMethod):
    name, label = "guided_backprop", "Guided backprop"
    reads = ("Gradient passed back only where both the forward activation and the backward signal are positive: "
             "sharp, edge-like pictures of what excites the class. Known to be largely independent of the "
             "top layers (see the randomisation check).")
    mode = "guided"

    def attribute(self, net, x, target):
        with ReluBackwardOverride(net, self.mode):
            return _input_grad(net, x, target).abs().amax(1).detach()


@register
class Deconvnet(GuidedBackprop):
    name, label = "deconvnet", "Deconvnet"
    reads = ("Zeiler & Fergus: the positive part of the signal is passed back through each rectifier whatever its "
             "forward activation; shows image structure that the network's filters respond to.")
    mode = "deconv"


# ----------------------------------------------------------------------------- CAM family
def block_outputs(model: nn.Module) -> list[str]:
    """Modules whose output is a block's or a stage's: the model's own children; every module with
    children of its own that sits in a Sequential or ModuleList (a residual block, a stage); and in a flat
    Sequential of layers (conv, norm, activation, pool, ...) the last layer before each conv, which ends
    a block. Never a conv inside a block (an inverted residual's 1x1 expansion is not what the block computes)."""
    out = [n for n, _ in model.named_children()]
    for name, m in model.named_modules():
        if isinstance(m, (nn.Sequential, nn.ModuleList)):
            kids = list(m.named_children())
            full = [(f"{name}.{c}" if name else c, child) for c, child in kids]
            out += [n for n, child in full if any(True for _ in child.children())]
            out += [full[i - 1][0] for i in range(1, len(full))
                    if isinstance(full[i][1], nn.Conv2d) and not any(True for _ in full[i - 1][1].children())]
    return list(dict.fromkeys(out))


def _conv_layer(net: nn.Module, x: torch.Tensor, layer: str, min_resolution: int) -> nn.Module:
    """The configured layer, or (auto) the last block or stage output (block_outputs) whose feature maps
    are at least `min_resolution` pixels on their short side for inputs like `x`: a 2x2 last layer (small
    inputs) makes a map that covers the whole image and says nothing. At full resolution that is the
    last feature map, CAM's layer, where Grad-CAM equals ReLU(CAM) up to scale. Falls back to the last
    block output with maps more than 1 pixel across."""
    model = inner(net)
    names = dict(model.named_modules())
    if layer != "auto":
        if layer not in names:
            raise CvauditError(f"config key explain.gradcam.layer: no module '{layer}' in the model; "
                               f"block outputs: {block_outputs(model)[-6:]}")
        return names[layer]
    if not any(isinstance(m, nn.Conv2d) for m in names.values()):
        raise NotApplicable("the model has no Conv2d layer (it needs spatial feature maps)")
    sizes: dict[str, int] = {}  # in the order the modules finish their forward pass
    hooks = [names[n].register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, min(o.shape[-2:]))
                                            if isinstance(o, torch.Tensor) and o.dim() == 4 else None)
             for n in block_outputs(model)]
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for h in hooks:
            h.remove()
    done = list(sizes)
    big = [n for n in done if sizes[n] >= min_resolution] or [n for n in done if sizes[n] > 1] or done
    if not big:
        raise NotApplicable("the model has no block with spatial feature maps")
    return names[big[-1]]


def layer_name(net: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in inner(net).named_modules() if m is module)


@register
class GradCAM(AttributionMethod):
    name, label, kind = "gradcam", "Grad-CAM", "cam"
    defaults = {"layer": "auto", "min_resolution": 7}
    reads = ("Selvaraju et al.: the layer's feature maps weighted by the average gradient of the class score, "
             "positive part: bright regions raised the score. Its resolution is that of the layer; by default the "
             "last block or stage output whose maps are at least 7 pixels across (at full resolution CAM's layer, "
             "where Grad-CAM is ReLU(CAM) up to scale).")

    def layer(self, net, x):
        return _conv_layer(net, x, self.options["layer"], self.options["min_resolution"])

    def attribute(self, net, x, target):
        from captum.attr import LayerAttribution, LayerGradCam

        cam = LayerGradCam(net, self.layer(net, x)).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].detach()


@register
class GuidedGradCAM(GradCAM):
    name, label, kind = "guided_gradcam", "Guided Grad-CAM", "gradient"
    reads = ("Guided backprop multiplied by Grad-CAM: fine detail, but only inside the regions Grad-CAM found "
             "class-relevant.")

    def attribute(self, net, x, target):
        return GuidedBackprop().attribute(net, x, target) * GradCAM(**self.options).attribute(net, x, target)


@register
class CAM(AttributionMethod):
    name, label, kind = "cam", "CAM", "cam"
    reads = ("Zhou et al.: for a network ending in global average pooling and one linear layer, the last feature "
             "maps weighted by the class's output weights. Positive where the region argues for the class.")

    @staticmethod
    def parts(net: nn.Module):
        """(feature module whose output is pooled, head Linear), or NotApplicable."""
        model = inner(net)
        mods = list(model.named_modules())
        pools = [i for i, (_, m) in enumerate(mods)
                 if isinstance(m, nn.AdaptiveAvgPool2d) or type(m).__name__ == "SelectAdaptivePool2d"]
        linears = [i for i, (_, m) in enumerate(mods) if isinstance(m, nn.Linear)]
        if not pools or not linears or linears[-1] < pools[-1] or len([i for i in linears if i > pools[-1]]) != 1:
            raise NotApplicable("CAM needs global average pooling followed by a single linear layer")
        return mods[pools[-1]][1], mods[linears[-1]][1]

    def attribute(self, net, x, target):
        pool, head = self.parts(net)
        feats = {}
        h = pool.register_forward_hook(lambda m, i, o: feats.__setitem__("a", i[0]))
        try:
            with torch.no_grad():
                net(x)
        finally:
            h.remove()
        a = feats["a"]
        if a.dim() != 4 or a.shape[1] != head.in_features:
            raise NotApplicable("the pooled features do not feed the linear head directly")
        cam = torch.einsum("nk,nkhw->nhw", head.weight[target], a)[:, None]
        return F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0].detach()


# ----------------------------------------------------------------------------- perturbation methods
def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF
    k = int(2 * round(3 * sigma) + 1)
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


@register
class IntegratedGradients(AttributionMethod):
    name, label = "integrated_gradients", "Integrated gradients"
    defaults = {"steps": 16, "baseline": "black", "max_steps": 512, "tolerance": 0.05}
    reads = ("Sundararajan et al.: gradients averaged along the straight path from a baseline image (black by "
             "default) to the input, times the difference; the values add up to the score difference (steps are "
             "raised per image until they do, within the tolerance).")

    def __init__(self, batch_size: int = 64, **options):
        super().__init__(batch_size, **options)
        self.records: list[dict] = []  # per attribute() call: steps, relative completeness error, converged

    def baseline(self, x):
        b = self.options["baseline"]
        if b == "black":
            return torch.zeros_like(x)
        if b == "blur":
            return _blur(x, max(x.shape[-1] / 16, 1.0))
        if b == "grey":
            return torch.full_like(x, 0.5)
        raise CvauditError(f"config key explain.integrated_gradients.baseline: '{b}'; use black, grey or blur")

    def attribute(self, net, x, target):
        """Completeness (sum of the map = F(x) - F(baseline), on the logit) is checked per image with
        captum's convergence delta; images that miss it by more than `tolerance` of the score difference
        are recomputed with twice the steps, up to max_steps. The rest are marked as not converged."""
        from captum.attr import IntegratedGradients as IG
        ig, base = IG(net), self.baseline(x)
        with torch.no_grad():
            diff = (net(x) - net(base)).gather(1, target.view(-1, 1))[:, 0].abs().float()
        allowed = self.options["tolerance"] * diff + 1e-4
        steps = self.options["steps"]
        attr = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
        used = torch.full((len(x),), steps, dtype=torch.long)
        err = torch.full((len(x),), float("inf"))
        ok = torch.zeros(len(x), dtype=torch.bool)
        todo = torch.arange(len(x), device=x.device)
        while len(todo):
            internal = max(len(todo), self.batch_size)  # captum splits the N x steps path images into calls of this size
            a, delta = ig.attribute(x[todo], baselines=base[todo], target=target[todo], n_steps=steps,
                                    internal_batch_size=internal, return_convergence_delta=True)
            attr[todo] = a.sum(1).detach().float()
            used[todo.cpu()] = steps
            d = delta.detach().abs().float()
            err[todo.cpu()] = (d / diff[todo].clamp_min(1e-12)).cpu()
            ok[todo.cpu()] = (d <= allowed[todo]).cpu()
            todo = todo[d > allowed[todo]]
            if steps * 2 > self.options["max_steps"]:
                break
            steps *= 2
        self.records.append({"steps": used.numpy(), "completeness_error": err.numpy(), "converged": ok.numpy()})
        return attr

    def model_passes(self, h, w):
        return self.options["steps"]


@register
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
    dev = next(net.parameters()).device

    def predict(batch):
        xb = torch.from_numpy(np.ascontiguousarray(batch)).float().permute(0, 3, 1, 2).to(dev)
        with torch.no_grad():
            return torch.softmax(net(xb).float(), 1)[:, [target]].cpu().numpy()
    return predict


@register
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


@register
class SHAP(AttributionMethod):
    name, label, kind = "shap", "SHAP (partition)", "perturbation"
    defaults = {"evals": "auto"}
    reads = ("Lundberg & Lee, Partition explainer: Shapley values of a hierarchy of image regions, hidden regions "
             "replaced by a blurred copy; the values of a map add up to the class probability minus that of the "
             "fully blurred image.")

    def evals(self, h: int, w: int) -> int:
        e = self.options["evals"]
        return max(128, h * w // 49) if e == "auto" else int(e)

    def model_passes(self, h, w):
        return self.evals(h, w)

    def attribute(self, net, x, target):
        import shap

        imgs = x.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.float64)
        blurred = _blur(x.detach().cpu(), max(x.shape[-1] / 16, 1.0)).permute(0, 2, 3, 1).numpy()
        cache = self.__dict__.setdefault("_maskers", {})
        if imgs.shape[1:] not in cache:  # its partition tree takes ~0.7 s for a 224 px image: build it once
            cache[imgs.shape[1:]] = shap.maskers.Image(np.zeros(imgs.shape[1:]), imgs.shape[1:])
        masker = cache[imgs.shape[1:]]
        out = []
        for img, blur, t in zip(imgs, blurred, target.tolist()):
            masker.mask_value = blur.astype(np.float64).ravel()  # blur without OpenCV, one partition tree
            explainer = shap.Explainer(target_probability_fn(net, t), masker, algorithm="partition")
            sv = explainer(img[None], max_evals=self.evals(*img.shape[:2]), batch_size=self.batch_size, silent=True)
            out.append(sv.values[0, ..., 0].sum(-1))
        return torch.tensor(np.stack(out), dtype=torch.float32)


@register
class RandomMap(AttributionMethod):
    name, label, kind = "random", "Random map (floor)", "reference"
    reads = "Seeded noise that ignores the model: the floor every method's faithfulness must beat."

    def model_passes(self, h, w):
        return 0

    def attribute(self, net, x, target):
        from .trust import image_generator
        index = getattr(self, "index", None)
        index = range(len(x)) if index is None else index.tolist()
        seed = int(self.options.get("seed", 0))
        return torch.stack([torch.rand(tuple(x.shape[-2:]), generator=image_generator(seed, j)) for j in index])


# ----------------------------------------------------------------------------- batching and the stage
def attribute_batched(method: AttributionMethod, net, x: torch.Tensor, target: torch.Tensor,
                      index: torch.Tensor | None = None) -> np.ndarray:
    """Maps for all images, every model call about `batch_size` images: gradient and CAM methods take
    that many images at a time; occlusion, integrated gradients, LIME and SHAP pack their own
    perturbations of fewer images into calls of that size. index: the images' positions in the whole
    audit set, which seed the methods that draw at random (default 0..N-1)."""
    per_image = method.model_passes(*x.shape[-2:])
    step = max(1, method.batch_size // per_image) if per_image > 1 else method.batch_size
    index = torch.arange(len(x)) if index is None else index
    out = []
    for i in range(0, len(x), step):
        method.index = index[i:i + step]
        out.append(method.attribute(net, x[i:i + step], target[i:i + step]).float().cpu())
    method.index = None
    return torch.cat(out).numpy() if out else np.zeros((0,) + tuple(x.shape[-2:]), np.float32)


def audit_images(audit: dict, device) -> torch.Tensor:
    """The audit set's uint8 images as a pixel-space batch in [0, 1]."""
    return torch.from_numpy(audit["images"]).permute(0, 3, 1, 2).float().div(255).to(device)


PER_IMAGE = ("maps_pred", "maps_true", "faith_deletion", "faith_insertion", "faith_deletion_auc",
             "faith_insertion_auc", "converged", "ig_steps", "completeness_error", "lime_r2_fresh", "lime_r2_own",
             "shap_regions")


def explain_part(method: str, model_path, audit_set, options: dict, trust: dict, seed: int, device: str,
                 threads: int, start: int = 0, stop: int | None = None) -> tuple[dict, dict]:
    """Explain audit images [start, stop) (all by default): the predicted class of each (and the true
    class where they differ), then score the maps: deletion/insertion faithfulness, and (in the part
    holding the first images) the cascading randomisation check. Every per-image result depends only
    on that image, so parts concatenated equal one whole run."""
    from . import trust as tr

    t0 = time.time()
    model, spec, net, dev = pixel_model(model_path, seed, device, threads)
    audit = load_audit_set(audit_set)
    x_all = audit_images(audit, dev)
    stop = len(x_all) if stop is None else min(stop, len(x_all))
    start = min(start, stop)
    x, index = x_all[start:stop], torch.arange(start, stop)
    batch = auto_batch(x_all.shape[-2], x_all.shape[-1], dev, trust["batch_size"])
    m = get_method(method, batch_size=batch, **({"seed": seed} | options))
    preds = torch.from_numpy(audit["preds"][start:stop]).to(dev)
    targets = torch.from_numpy(audit["targets"][start:stop]).to(dev)
    result = {"method": method, "label": m.label, "kind": m.kind, "reads": m.reads, "applicable": True,
              "reason": "", "options": m.options, "start": start, "n_images": int(len(x)), "batch_size": batch}
    arrays = {}
    try:
        if len(x) == 0:  # an empty shard (the audit set is smaller than the shards planned for it)
            result["attribution_seconds"] = 0.0
            return result, arrays
        if isinstance(m, GradCAM):
            result["layer"] = layer_name(net, m.layer(net, x))
        ta = time.time()
        maps_pred = attribute_batched(m, net, x, preds, index)
        result["attribution_seconds"] = round(time.time() - ta, 3)
        if isinstance(m, LIME):  # each surrogate's fit on fresh samples, and its own score
            arrays.update(lime_r2_fresh=np.array([r["r2_fresh"] for r in m.records[:len(x)]]),
                          lime_r2_own=np.array([r["r2_own"] for r in m.records[:len(x)]]))
        if isinstance(m, SHAP):  # its effective resolution: distinct values (regions) per map
            arrays.update(shap_regions=np.array([len(np.unique(mp)) for mp in maps_pred]))
        if isinstance(m, IntegratedGradients):  # completeness per image: unconverged maps leave the trust scores
            rec = {k: np.concatenate([r[k] for r in m.records]) for k in ("steps", "completeness_error", "converged")}
            arrays.update(converged=rec["converged"], ig_steps=rec["steps"],
                          completeness_error=rec["completeness_error"])
            if not rec["converged"].all():
                log.warning("integrated gradients: %d of %d maps miss completeness by more than %.0f%% at %d steps",
                            int((~rec["converged"]).sum()), len(x), 100 * m.options["tolerance"], m.options["max_steps"])
        differ = (preds != targets).nonzero().flatten()
        maps_true = np.full_like(maps_pred, np.nan)
        if len(differ):
            maps_true[differ.cpu().numpy()] = attribute_batched(m, net, x[differ], targets[differ],
                                                                index[differ.cpu()])
        arrays.update(maps_pred=maps_pred, maps_true=maps_true)
        faith = tr.deletion_insertion(net, x, preds, torch.from_numpy(maps_pred), steps=trust["steps"],
                                      batch_size=batch, seed=seed, index=index.tolist(),
                                      substrate=trust.get("substrate", "rise"))
        arrays.update({f"faith_{k}": v for k, v in faith.items()})
        k = min(trust["sanity_images"], len(x)) if start == 0 else 0
        if m.kind != "reference" and k > 0:
            result["sanity"] = tr.cascading_randomisation(m, net, x[:k], preds[:k], maps_pred[:k],
                                                          stages=trust["sanity_stages"], seed=seed)
            if "converged" in arrays:
                result["sanity"]["converged"] = arrays["converged"][:k].tolist()
    except NotApplicable as e:
        log.warning("%s is not applicable to this model: %s", m.label, e)
        result.update(applicable=False, reason=str(e))
    finally:
        result["seconds"] = round(time.time() - t0, 2)
    return result, arrays


def merge_explain(parts: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """One method's result over the whole audit set from its parts (in image order)."""
    full = [(r, a) for r, a in parts if r["n_images"] > 0] or parts[:1]
    result = {k: v for k, v in full[0][0].items() if k != "start"}
    result["seconds"] = round(sum(r["seconds"] for r, _ in parts), 2)
    result["n_images"] = int(sum(r["n_images"] for r, _ in parts))
    result["shards"] = len(parts)
    bad = [r for r, _ in full if not r["applicable"]]
    if bad:
        result.update(applicable=False, reason=bad[0]["reason"])
        result.pop("sanity", None)
        return result, {}
    result["attribution_seconds"] = round(sum(r.get("attribution_seconds", 0) for r, _ in full), 3)
    sanity = [r["sanity"] for r, _ in full if r.get("sanity")]
    if sanity:
        result["sanity"] = sanity[0]
    arrays = {k: np.concatenate([a[k] for _, a in full]) for k in PER_IMAGE if k in full[0][1]}
    if "faith_fractions" in full[0][1]:
        arrays["faith_fractions"] = full[0][1]["faith_fractions"]
        ok = arrays["converged"].astype(bool) if "converged" in arrays else np.ones(len(arrays["faith_deletion_auc"]), bool)
        result["faithfulness"] = {"deletion_auc": float(arrays["faith_deletion_auc"][ok].mean()) if ok.any() else None,
                                  "insertion_auc": float(arrays["faith_insertion_auc"][ok].mean()) if ok.any() else None,
                                  "n": int(ok.sum()), "left_out": int((~ok).sum())}
        if "converged" in arrays:
            result["completeness"] = {"converged": int(ok.sum()), "of": int(len(ok)),
                                      "max_error": float(np.max(arrays["completeness_error"])),
                                      "max_steps": int(np.max(arrays["ig_steps"]))}
    return result, arrays


def run_explain(method: str, model_path, audit_set, options: dict, trust: dict, seed: int, device: str,
                threads: int, out_maps, parts: list | None = None) -> dict:
    """The explain stage: the whole audit set in one job, or (parts: the files of explain_shard jobs) the
    merge of its shards."""
    if parts:
        loaded = []
        for p in parts:
            a = load_npz(p)
            loaded.append((a.pop("meta"), a))
    else:
        loaded = [explain_part(method, model_path, audit_set, options, trust, seed, device, threads)]
    result, arrays = merge_explain(loaded)
    save_npz(out_maps, result, **arrays)
    log.info("%s: %s in %.1fs (%d images, %d part(s))", method, "done" if result["applicable"] else "not applicable",
             result["seconds"], result["n_images"], len(loaded))
    return result


def run_explain_shard(method: str, model_path, audit_set, options: dict, trust: dict, seed: int, device: str,
                      threads: int, shard: int, shard_size: int, out) -> dict:
    result, arrays = explain_part(method, model_path, audit_set, options, trust, seed, device, threads,
                                  start=shard * shard_size, stop=(shard + 1) * shard_size)
    save_npz(out, result, **arrays)
    log.info("%s: shard %d (%d images) in %.1fs", method, shard, result["n_images"], result["seconds"])
    return result


load_maps = load_npz