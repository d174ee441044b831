"""The attribution methods' interface and registry: a method's `attribute(net, x, target)` takes a batch of
images in pixel space ([0, 1], N x 3 x H x W; `net` normalises them itself, see pixels.PixelSpace) and
the class to explain for each, and returns maps (N, H, W) where higher means more evidence for that class.
A new method is one class in the module of its family plus one line in cvaudit.core.registry.METHODS (and its
options in the schema)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from cvaudit import CvauditError
from cvaudit.core import registry
from cvaudit.net.export import is_export
from cvaudit.net.models import is_ensemble


class NotApplicable(Exception):
    """The method cannot explain this model (e.g. Grad-CAM on a model without conv layers)."""


GRADIENT_FREE = ("perturbation", "reference")  # the kinds that read the model's outputs alone (an export's too)


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


def refuse_ensemble(net: nn.Module, why: str) -> None:
    """NotApplicable for an ensemble (arch: ensemble) where a method needs one network's layers."""
    if is_ensemble(net):
        raise NotApplicable(f"the model is an ensemble: {why}, and an ensemble's average has no such layer of its own "
                            "(each member's report shows this method on that member)")


def refuse_export(method: AttributionMethod, net: nn.Module) -> None:
    """NotApplicable for a method that needs gradients or layers on an export (arch onnx: or torchscript:)."""
    if method.kind not in GRADIENT_FREE and is_export(net):
        raise NotApplicable(f"{registry.EXPORT_REASON}; {method.label} needs its gradients or layers")


@contextlib.contextmanager
def out_of_place(net: nn.Module):
    """ReLU/ReLU6 modules switched to out-of-place while captum's or zennit's hooks run (backward hooks cannot
    see through an in-place op), and switched back after, whatever happens."""
    relus = [m for m in net.modules() if isinstance(m, (nn.ReLU, nn.ReLU6)) and m.inplace]
    for m in relus:
        m.inplace = False
    try:
        yield net
    finally:
        for m in relus:
            m.inplace = True


class Completeness:
    """A method that promises its map sums to a score difference (DeepLIFT, the SHAP family, LRP's
    conservation): every call records, per image, the relative miss |sum of the map - expected| / |expected|
    (`records`), which the explain stage reports per model and the report flags when the method breaks
    its own promise. Subclasses set `promise` (what the sum should equal, for the report) and `caveat`
    (where the promise is known not to hold), and call `check` with both sides."""
    promise = ""
    caveat = ""

    def __init__(self, batch_size: int = 64, **options):
        super().__init__(batch_size, **options)
        self.records: list[dict] = []

    def check(self, total: torch.Tensor, expected: torch.Tensor) -> None:
        err = ((total.detach().double() - expected.detach().double()).abs()
               / expected.detach().double().abs().clamp_min(1e-12)).cpu().numpy()
        self.records.append({"completeness_error": err})


def get_method(name: str, **options) -> AttributionMethod:
    """The method registered under `name` in cvaudit.core.registry.METHODS (only its family's module is imported)."""
    if name not in registry.METHODS:
        raise CvauditError(f"unknown attribution method '{name}' (config key explain.methods); "
                           f"available: {', '.join(sorted(registry.METHODS))}")
    return registry.load(registry.METHODS[name])(**options)


def _input_grad(net, x, target) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    out = net(x)
    (g,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return g


def attribute_batched(method: AttributionMethod, net, x: torch.Tensor, target: torch.Tensor,
                      index: torch.Tensor | None = None) -> np.ndarray:
    """Maps for all images, every model call about `batch_size` images: gradient and CAM methods take
    that many images at a time; occlusion, integrated gradients, LIME and SHAP pack their own
    perturbations of fewer images into calls of that size. index: the images' positions in the whole
    audit set, which seed the methods that draw at random (default 0..N-1)."""
    refuse_export(method, net)
    per_image = method.model_passes(*x.shape[-2:])
    step = max(1, method.batch_size // per_image) if per_image > 1 else method.batch_size
    index = torch.arange(len(x)) if index is None else index
    out = []
    for i in range(0, len(x), step):
        method.index = index[i:i + step]
        out.append(method.attribute(net, x[i:i + step], target[i:i + step]).float().cpu())
    method.index = None
    return torch.cat(out).numpy() if out else np.zeros((0,) + tuple(x.shape[-2:]), np.float32)
