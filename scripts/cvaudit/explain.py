"""Attribution methods behind one interface: a registry from config name to a method whose
`attribute(model, x, target)` returns maps of shape (N, H, W). Captum does the work."""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import torch
from torch import nn

from . import CvauditError
from .evaluate import load_audit_set
from .io import atomic_path
from .models import last_conv_layer, load_model, resolve_device
from .train import seed_everything

log = logging.getLogger("cvaudit.explain")


class NotApplicable(Exception):
    """The method cannot explain this model (e.g. Grad-CAM on a model without conv layers)."""


class AttributionMethod:
    name: str = ""
    label: str = ""
    reads = ""  # one line for the report: how to read the maps

    def __init__(self, **options):
        self.options = options

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


METHODS: dict[str, type[AttributionMethod]] = {}


def register(cls):
    METHODS[cls.name] = cls
    return cls


@register
class GradCAM(AttributionMethod):
    name, label = "gradcam", "Grad-CAM"
    reads = ("Grad-CAM weights the chosen layer's feature maps by the average gradient of the class score and "
             "keeps the positive part: bright regions raised the score of the explained class. Its resolution is "
             "that of the layer; by default the last conv layer whose maps are at least 7 pixels across "
             "(explain.gradcam.min_resolution), since a deeper but smaller one would colour the whole image.")

    def layer_name(self, model: nn.Module, x: torch.Tensor | None = None) -> str:
        """The configured layer, or (auto) the last Conv2d whose output is at least `min_resolution`
        pixels on its short side for inputs like `x`: a 2x2 last layer (small inputs) makes a map
        that covers the whole image and says nothing. Falls back to the last Conv2d."""
        if getattr(self, "_layer", None):
            return self._layer
        layer = self.options.get("layer", "auto")
        names = dict(model.named_modules())
        if layer != "auto":
            if layer not in names:
                convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d)][-5:]
                raise CvauditError(f"config key explain.gradcam.layer: no module '{layer}' in the model; "
                                   f"last conv layers: {convs}")
            self._layer = layer
            return layer
        convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise NotApplicable("the model has no Conv2d layer (Grad-CAM needs spatial feature maps)")
        self._layer = convs[-1]
        if x is not None:
            sizes: dict[str, int] = {}
            hooks = [names[n].register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, min(o.shape[-2:])))
                     for n in convs]
            try:
                with torch.no_grad():
                    model(x[:1])
            finally:
                for h in hooks:
                    h.remove()
            big = [n for n in convs if sizes.get(n, 0) >= self.options.get("min_resolution", 7)]
            if big:
                self._layer = big[-1]
        return self._layer

    def attribute(self, model, x, target):
        from captum.attr import LayerAttribution, LayerGradCam

        layer = model.get_submodule(self.layer_name(model, x))
        cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].detach()


def get_method(name: str, **options) -> AttributionMethod:
    if name not in METHODS:
        raise CvauditError(f"unknown attribution method '{name}' (config key explain.methods); "
                           f"available: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)


def attribute_batched(method: AttributionMethod, model, x: torch.Tensor, target: torch.Tensor,
                      batch_size: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch_size):
        out.append(method.attribute(model, x[i:i + batch_size], target[i:i + batch_size]).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0,) + tuple(x.shape[-2:]), np.float32)


def normalise_audit_images(images: np.ndarray, spec: dict, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) audit images -> the model's normalised input batch."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)


def run_explain(method: str, model_path, audit_set, options: dict, seed: int, device: str, threads: int,
                out_maps) -> dict:
    """Explain the predicted class of every audit image, and the true class where they differ."""
    t0 = time.time()
    seed_everything(seed, threads)
    dev = resolve_device(device)
    model, spec = load_model(model_path, dev)
    audit = load_audit_set(audit_set)
    m = get_method(method, **options)
    x = normalise_audit_images(audit["images"], spec, dev)
    preds, targets = torch.from_numpy(audit["preds"]).to(dev), torch.from_numpy(audit["targets"]).to(dev)
    result = {"method": method, "label": m.label, "reads": m.reads, "applicable": True, "reason": ""}
    try:
        maps_pred = attribute_batched(m, model, x, preds)
        differ = (preds != targets).nonzero().flatten()
        maps_true = np.full_like(maps_pred, np.nan)
        if len(differ):
            maps_true[differ.cpu().numpy()] = attribute_batched(m, model, x[differ], targets[differ])
        if hasattr(m, "layer_name"):
            result["layer"] = m.layer_name(model)
    except NotApplicable as e:
        log.warning("%s is not applicable to this model: %s", m.label, e)
        maps_pred = maps_true = np.zeros((0, 0, 0), np.float32)
        result.update(applicable=False, reason=str(e))
    result["seconds"] = round(time.time() - t0, 2)
    with atomic_path(out_maps) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, maps_pred=maps_pred, maps_true=maps_true,
                            meta=np.array(json.dumps(result)))
    return result


def load_maps(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files if k != "meta"}
        out["meta"] = json.loads(str(z["meta"]))
    return out
