"""The layer_views stage: what the layers keep.

- Feature inversion (Mahendran & Vedaldi 2015, "Understanding Deep Image Representations by Inverting
  Them"): from the features of an audit image at an early, a middle and a late layer, an image is
  reconstructed by gradient descent on ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 + lambda TV(x), from grey
  plus noise (the gradient-ascent machinery of visualise_ascent, with the total-variation prior). How far
  each reconstruction stays from the image (normalised pixel distance) says how much the layer keeps.
- Effective receptive field (Luo et al. 2016; Raghu et al. 2021 use it to compare ViTs and CNNs): the
  absolute gradient of the centre location of a layer's feature map (summed over channels) with respect
  to the input, averaged over test images; the radius (half-side of the centred square) holding 50% and
  90% of its mass, beside the theoretical receptive field (the extent of the gradient's support over all
  images: every pixel that can move the unit).
The layers are the activation layers inspect_units shows (its `stages`, early to late).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from cvaudit.core.files import save_npz
from cvaudit.net.hooks import Hooks
from cvaudit.net.models import auto_batch
from cvaudit.net.pixel_space import pixel_model
from cvaudit.net.sample import robustness_images
from cvaudit.net.tokens import as_maps, token_layout
from cvaudit.represent.inspect_units import activation_layers, output_shapes, pick_stages
from cvaudit.represent.visualise_ascent import gradient_ascent

log = logging.getLogger("cvaudit.represent.layer_views")


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per image: sum over pixels of (dx^2 + dy^2)^(beta/2) (Mahendran & Vedaldi's TV^beta), per pixel."""
    dx = x[..., 1:, :-1] - x[..., :-1, :-1]
    dy = x[..., :-1, 1:] - x[..., :-1, :-1]
    return ((dx ** 2 + dy ** 2 + 1e-8) ** (beta / 2)).flatten(1).mean(1)


class InversionObjective:
    """Scores a batch whose image i inverts targets[which[i]][i], the features of its target image at layer
    which[i]: -(||phi(x) - phi(x0)||^2 / ||phi(x0)||^2) - tv * TV(x); one forward pass for every layer."""

    def __init__(self, net, targets: dict[str, torch.Tensor], which: list[str], tv: float):
        self.net, self.which, self.targets, self.tv = net, which, targets, tv
        self.store, self.hooks = {}, Hooks()
        for name in dict.fromkeys(which):  # a clone: the next module may work in place
            self.hooks.forward(net.model.get_submodule(name),
                               lambda m, i, o, name=name: self.store.__setitem__(name, o.clone()))

    def loss(self, x):
        self.net(x)
        out = []
        for i, name in enumerate(self.which):
            f, t = self.store[name][i].flatten(), self.targets[name][i].flatten()
            out.append((f - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
        return torch.stack(out)

    def __call__(self, x):
        return -self.loss(x) - self.tv * total_variation(x)

    def close(self):
        self.hooks.remove()


@torch.no_grad()
def _features(net, x, layers):
    store = {}
    with Hooks() as hooks:
        for name in layers:
            hooks.forward(net.model.get_submodule(name), lambda m, i, o, name=name: store.__setitem__(name, o.clone()))
        net(x)
    return store


def invert(net, x0: torch.Tensor, layers: list[str], options: dict, seed: int, device) -> dict:
    """Reconstructions of images x0 (N, 3, H, W in [0, 1]) from each layer: arrays (layers, N, 3, H, W), the
    feature loss reached and the normalised pixel distance ||x - x0|| / ||x0 - mean(x0)|| per (layer, image)."""
    n, k = len(x0), len(layers)
    feats = _features(net, x0, layers)
    which = [name for name in layers for _ in range(n)]
    targets = {name: feats[name].repeat(k, *([1] * (feats[name].dim() - 1))) for name in layers}
    obj = InversionObjective(net, targets, which, options["tv"])
    try:
        res = gradient_ascent(net, obj, n * k, x0.shape[-1], options["steps"], options["lr"], 0, 0, 0.5, 0.0, seed, device)
        with torch.no_grad():
            final = obj.loss(res["images"].to(device)).cpu()
    finally:
        obj.close()
    rec = res["images"].reshape(k, n, *x0.shape[1:])
    ref = x0.cpu()
    dist = ((rec - ref).flatten(2).norm(dim=2) / (ref - ref.mean((1, 2, 3), keepdim=True)).flatten(1).norm(dim=1).clamp_min(1e-8))
    return {"images": rec, "feature_loss": final.reshape(k, n), "distance": dist}


def effective_receptive_fields(net, x: torch.Tensor, layers: list[str], batch: int) -> dict[str, dict | None]:
    """Per layer: mean |d (sum over channels of the centre unit) / d input| over images x, summed over colour
    channels and normalised to sum 1; radii holding 50% and 90% of it; the theoretical field's extent. None
    for a layer without a spatial map. One forward pass per batch serves every layer (a backward each)."""
    total, support, n, layout = {}, {}, 0, token_layout(net)
    modules = {name: net.model.get_submodule(name) for name in layers}
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].clone().requires_grad_(True)
        store = {}
        with Hooks() as hooks:
            for name, module in modules.items():  # a transformer's patch tokens on the grid
                hooks.forward(module, lambda m, inp, o, name=name: store.__setitem__(name, as_maps(o.clone(), layout)))
            net(xb)
        spatial = [name for name in layers if store[name].dim() == 4]
        for k, name in enumerate(spatial):
            o = store[name]
            h, w = o.shape[-2:]
            (grad,) = torch.autograd.grad(o[:, :, h // 2, w // 2].sum(), xb, retain_graph=k < len(spatial) - 1)
            g = grad.abs().sum(1).detach().cpu().double()  # (B, H, W)
            total[name] = g.sum(0) if name not in total else total[name] + g.sum(0)
            nz = (g > 0).any(0)
            support[name] = nz if name not in support else support[name] | nz
        n += len(xb)
    return {name: _erf_summary(total[name], support[name], n, store[name].shape[-2:]) if name in total else None
            for name in layers}


def effective_receptive_field(net, x: torch.Tensor, layer: str, batch: int) -> dict | None:
    """One layer's effective receptive field (effective_receptive_fields)."""
    return effective_receptive_fields(net, x, [layer], batch)[layer]


def _erf_summary(total: torch.Tensor, support: torch.Tensor, n: int, feature_map) -> dict:
    erf = (total / total.sum().clamp_min(1e-300)).numpy()
    H, W = erf.shape
    cy, cx = (H - 1) / 2, (W - 1) / 2
    yy, xx = np.mgrid[:H, :W]
    cheb = np.maximum(np.abs(yy - cy), np.abs(xx - cx))
    radii = np.unique(cheb)
    mass = np.array([erf[cheb <= r].sum() for r in radii])
    rows, cols = np.flatnonzero(support.numpy().any(1)), np.flatnonzero(support.numpy().any(0))
    theory = int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)) if len(rows) else 0
    return {"map": erf.astype(np.float32), "r50": float(radii[np.searchsorted(mass, 0.5 - 1e-12)]),
            "r90": float(radii[np.searchsorted(mass, 0.9 - 1e-12)]), "theoretical": theory, "images": n,
            "feature_map": [int(d) for d in feature_map]}


def run_layer_views(model_path, manifest, audit_set, units_options: dict, options: dict, seed: int, device: str,
                    threads: int, out) -> dict:
    from cvaudit.core.files import load_audit_set
    t0 = time.time()
    model, spec, net, dev = pixel_model(model_path, seed, device, threads, frozen=True)
    size = spec["input_size"]
    probe = torch.zeros(1, 3, size, size, device=dev)
    layers = pick_stages(output_shapes(net.model, activation_layers(net.model), probe), units_options["stages"]) \
        if units_options["layers"] == "auto" else list(units_options["layers"])
    audit = load_audit_set(audit_set)
    x0 = torch.from_numpy(np.asarray(audit["images"][:options["inversion"]["images"]])).permute(0, 3, 1, 2)
    x0 = x0.float().div(255).to(dev)
    meta = {"layers": layers, "inversion": None, "erf": {}}
    arrays = {}
    if options["inversion"]["images"] and len(x0):
        inv = invert(net, x0, layers, options["inversion"], seed, dev)
        meta["inversion"] = {"options": options["inversion"], "feature_loss": inv["feature_loss"].tolist(),
                             "distance": inv["distance"].tolist(), "mean_distance": inv["distance"].mean(1).tolist()}
        arrays["inversions"] = (inv["images"].permute(0, 1, 3, 4, 2).numpy() * 255).round().astype(np.uint8)
        arrays["originals"] = (x0.cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    if options["erf"]["images"]:
        x8, _, _ = robustness_images(manifest, spec, options["erf"]["images"], seed)
        x = x8.to(dev).float().div(255)
        fields = effective_receptive_fields(net, x, layers, auto_batch(size, size, dev))
        for j, name in enumerate(layers):
            e = fields[name]
            if e is None:
                meta["erf"][name] = {"reason": "no spatial feature map (a fully connected layer sees the whole image)"}
                continue
            arrays[f"erf_{j}"] = e.pop("map")
            meta["erf"][name] = e
    meta["input_size"] = size
    meta["seconds"] = round(time.time() - t0, 2)
    save_npz(out, meta, **arrays)
    log.info("layer views: inversion distance %s, ERF r90 %s (%.1fs)", (meta["inversion"] or {}).get("mean_distance"),
             {k: v.get("r90") for k, v in meta["erf"].items()}, meta["seconds"])
    return meta
