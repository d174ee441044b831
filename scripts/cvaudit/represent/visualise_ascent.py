"""The visualise_ascent stage: images synthesised by gradient ascent for a channel (filter
visualisation) or a class score (Simonyan et al.'s class model visualisation, score - lambda *
||I||^2). It needs no data, only the model and the channels inspect_units chose, so its options can
change without another pass over the test set.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from cvaudit.core.files import load_npz, save_npz
from cvaudit.net.hooks import Hooks
from cvaudit.net.pixel_space import blur, pixel_model
from cvaudit.net.tokens import as_maps, token_layout

log = logging.getLogger("cvaudit.represent.visualise_ascent")


def gradient_ascent(net: nn.Module, objective, n: int, size: int, steps: int, lr: float, jitter: int,
                    blur_every: int, blur_sigma: float, decay: float, seed: int, device) -> dict:
    """Images in [0, 1] that maximise objective(x) -> (n,) minus decay * ||x - 0.5||^2, from grey
    plus noise (so units that are off for flat grey still get a gradient), with random jitter (shifts) each step and a blur every `blur_every` steps:
    the regularisers that keep the result from being high-frequency noise."""
    g = torch.Generator().manual_seed(seed)
    x0 = (0.5 + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1).to(device)
    x = x0.clone().requires_grad_(True)
    with torch.no_grad():
        start = objective(x).float().cpu()
    opt = torch.optim.Adam([x], lr=lr)
    for step in range(steps):
        dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g)) if jitter else (0, 0)
        score = objective(torch.roll(x, (dy, dx), (2, 3)))
        loss = -(score - decay * (x - 0.5).pow(2).flatten(1).sum(1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                x.copy_(blur(x, blur_sigma))
            x.clamp_(0, 1)
    with torch.no_grad():
        end = objective(x).float().cpu()
    return {"initial": x0.cpu(), "images": x.detach().cpu(), "start": start, "end": end}


@torch.no_grad()
def channel_activation(net: nn.Module, layer: str, x: torch.Tensor, channels) -> torch.Tensor:
    """Mean activation (the module's output) of channels[i] for image i."""
    store = {}
    with Hooks() as hooks:
        hooks.forward(net.model.get_submodule(layer), lambda m, i, o: store.__setitem__("o", o))
        net(x)
    o = as_maps(store["o"].float(), token_layout(net))
    o = o.flatten(2).mean(2) if o.dim() == 4 else o
    return o[torch.arange(len(x)), torch.as_tensor(channels, dtype=torch.long)].cpu()


class AscentObjective:
    """One forward pass scores every image of the batch: the first images by the mean pre-activation
    of their channel of `layer` (the input of the activation module, so a channel that is off still
    gets a gradient), the rest by the logit of their class (before softmax, as Simonyan et al.)."""

    def __init__(self, net: nn.Module, layer: str | None, channels, classes):
        self.net, self.channels, self.classes = net, torch.as_tensor(channels, dtype=torch.long), \
            torch.as_tensor(classes, dtype=torch.long)
        self.store, self.hooks = {}, Hooks()
        if layer and len(self.channels):
            self.hooks.forward_pre(net.model.get_submodule(layer),
                                   lambda m, a: self.store.__setitem__("pre", a[0].clone()))  # the module may work in place

    def __call__(self, x):
        logits = self.net(x)
        nc = len(self.channels)
        parts = []
        if nc:
            pre = as_maps(self.store["pre"][:nc], token_layout(self.net))
            pre = pre.flatten(2).mean(2) if pre.dim() == 4 else pre
            parts.append(pre[torch.arange(nc), self.channels.to(pre.device)])
        if len(self.classes):
            parts.append(logits[nc:][torch.arange(len(self.classes)), self.classes.to(logits.device)])
        return torch.cat(parts)

    def close(self):
        self.hooks.remove()


def run_ascent(model_path, units, options: dict, seed: int, device: str, threads: int, out) -> dict:
    t0 = time.time()
    model, spec, net, dev = pixel_model(model_path, seed, device, threads, frozen=True)
    u = load_npz(units)
    chans = u["channels"][:options["channels"]]
    classes = u["meta"]["class_idx"][:options["classes"]]
    size = spec["input_size"] if options["size"] == "auto" else options["size"]
    obj = AscentObjective(net, u["meta"]["unit_layer"], chans, classes)
    try:
        res = gradient_ascent(net, obj, len(chans) + len(classes), size, options["steps"], options["lr"],
                              options["jitter"], options["blur_every"], options["blur_sigma"], options["decay"],
                              seed, dev)
    finally:
        obj.close()
    nc = len(chans)
    post = [channel_activation(net, u["meta"]["unit_layer"], res[k][:nc].to(dev), chans).tolist()
            for k in ("initial", "images")] if nc else [[], []]
    meta = {"unit_layer": u["meta"]["unit_layer"], "channels": [int(c) for c in chans], "classes": classes,
            "class_names": [spec["class_names"][c] for c in classes], "size": size, "options": options,
            "channel_objective": {"start": res["start"][:nc].tolist(), "end": res["end"][:nc].tolist()},
            "channel_activation": {"start": post[0], "end": post[1]},
            "class_score": {"start": res["start"][nc:].tolist(), "end": res["end"][nc:].tolist()},
            "seconds": round(time.time() - t0, 2)}
    images = (res["images"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    save_npz(out, meta, channel_images=images[:nc], class_images=images[nc:])
    log.info("gradient ascent: %d channels, %d classes at %d px in %.1fs", nc, len(classes), size, meta["seconds"])
    return meta
