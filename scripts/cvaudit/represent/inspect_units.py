"""The inspect_units stage: what single units respond to. Activation maps with sparsity and dead
channels, first-layer filters, the test images (and receptive-field patches) that fire a channel
most, in one streamed pass over the test set (memory holds running counts and a running top-k,
never the images). Images synthesised for the channels it chooses are the visualise_ascent stage's.
"""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch
from torch import nn

from cvaudit import CvauditError
from cvaudit.core.files import load_audit_set, save_npz
from cvaudit.core.images import load_rgb
from cvaudit.core.manifest import ImageDataset, image_loader, read_manifest
from cvaudit.net.hooks import Hooks
from cvaudit.net.models import _head_name, auto_batch
from cvaudit.net.pixel_space import audit_images, pixel_model
from cvaudit.net.tokens import as_maps, token_layout
from cvaudit.net.transforms import display_transform, eval_transform

log = logging.getLogger("cvaudit.represent.inspect_units")

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.PReLU)


# ----------------------------------------------------------------------------- layers
def activation_layers(model: nn.Module) -> list[str]:
    """Activation modules (where sparsity and "dead" mean something), in forward-definition order,
    the head's excluded."""
    head = _head_name(model)
    return [n for n, m in model.named_modules()
            if n and not n.startswith(head) and (isinstance(m, ACTIVATIONS)
                                                 or type(m).__module__.startswith(("timm.layers.activations",
                                                                                   "transformers.activations")))]


@torch.no_grad()
def output_shapes(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple]:
    """Output shape (without batch) of each named module for input `x`, in the order they run; a transformer's
    token outputs as maps on the patch grid (channels, rows, cols)."""
    shapes, layout = {}, token_layout(model)
    with Hooks() as hooks:
        for n in names:
            hooks.forward(model.get_submodule(n),
                          lambda m, i, o, n=n: shapes.setdefault(n, tuple(as_maps(o, layout).shape[1:])))
        model(x)
    return shapes


def pick_stages(shapes: dict[str, tuple], n: int) -> list[str]:
    """n activation layers from early to late, evenly spaced among those with spatial maps (all
    of them for a model without any, e.g. an MLP)."""
    cands = [k for k, s in shapes.items() if len(s) == 3] or list(shapes)
    if len(cands) <= n:
        return cands
    return [cands[int(round(i * (len(cands) - 1) / (n - 1)))] for i in range(n)] if n > 1 else [cands[-1]]


def resolve_layers(model: nn.Module, x: torch.Tensor, opts: dict) -> tuple[list[str], str, dict]:
    """The activation layers to report and the layer whose channels are studied, from config."""
    names = activation_layers(model)
    if not names:
        raise CvauditError("the model has no activation modules (nn.ReLU, nn.SiLU, ...) to inspect")
    shapes = output_shapes(model, names, x)
    if opts["layers"] == "auto":
        stages = pick_stages(shapes, opts["stages"])
    else:
        unknown = [n for n in opts["layers"] if n not in shapes]
        if unknown:
            raise CvauditError(f"config key represent.units.layers: {unknown} are not activation modules of the "
                               f"model; some that are: {list(shapes)[:: max(1, len(shapes) // 8)]}")
        stages = list(opts["layers"])
    unit = opts["unit_layer"]
    if unit == "auto":
        unit = stages[len(stages) // 2]  # the middle stage: patterns richer than edges, patches still local
    elif unit not in shapes:
        raise CvauditError(f"config key represent.units.unit_layer: '{unit}' is not an activation module of the "
                           f"model; some that are: {list(shapes)[:: max(1, len(shapes) // 8)]}")
    return stages, unit, {k: shapes[k] for k in dict.fromkeys(stages + [unit])}


# ----------------------------------------------------------------------------- the streamed pass
def _spatial_max(o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: the largest activation and its flat position (0 for 2-D outputs)."""
    if o.dim() == 2:
        return o, torch.zeros_like(o, dtype=torch.long)
    return o.flatten(2).max(2)


class TopK:
    """Running top-k images per channel; on ties the earlier image wins (stable sort)."""

    def __init__(self, k: int):
        self.k, self.values, self.index, self.loc = k, None, None, None

    def update(self, values: torch.Tensor, loc: torch.Tensor, first: int) -> None:
        idx = torch.arange(first, first + len(values)).view(-1, 1).expand_as(values)
        if self.values is not None:
            values, idx, loc = (torch.cat([a, b]) for a, b in ((self.values, values), (self.index, idx),
                                                              (self.loc, loc)))
        order = torch.sort(values, dim=0, descending=True, stable=True).indices[:self.k]
        self.values, self.index, self.loc = (t.gather(0, order) for t in (values, idx, loc))


@torch.no_grad()
def unit_statistics(model: nn.Module, rows: list[dict], spec: dict, device, layers: list[str], unit: str,
                    top_k: int, batch_size="auto") -> dict:
    """One pass over `rows`: per layer the share of activations <= 0 (sparsity) and every channel's
    maximum (a channel whose maximum is <= 0 is dead: never active on these images); for `unit`,
    the top-k images per channel by their strongest position."""
    names = list(dict.fromkeys(layers + [unit]))
    stats = {n: {"active": 0, "total": 0, "max": None} for n in names}
    top, seen, layout = TopK(top_k), 0, token_layout(model)

    def hook(mod, inp, out, n):
        o = as_maps(out.detach().float(), layout)  # a transformer's patch tokens on the grid
        s = stats[n]
        s["active"] += int((o > 0).sum())
        s["total"] += o.numel()
        cmax = (o.transpose(0, 1).flatten(1) if o.dim() > 1 else o.view(1, -1)).amax(1).cpu()
        s["max"] = cmax if s["max"] is None else torch.maximum(s["max"], cmax)
        if n == unit:
            v, loc = _spatial_max(o)
            top.update(v.cpu(), loc.cpu(), seen)

    bs = auto_batch(spec["input_size"], spec["input_size"], device, batch_size)
    with Hooks() as hooks:
        for n in names:
            hooks.forward(model.get_submodule(n), lambda m, i, o, n=n: hook(m, i, o, n))
        for x, _ in image_loader(rows, spec["class_names"], eval_transform(spec), bs, device):
            model(x.to(device, non_blocking=True))
            seen += len(x)
    return {"layers": {n: {"sparsity": 1 - s["active"] / max(1, s["total"]), "channel_max": s["max"].numpy(),
                           "dead": int((s["max"] <= 0).sum()), "channels": int(len(s["max"]))}
                       for n, s in stats.items()},
            "top_values": top.values.numpy(), "top_index": top.index.numpy(), "top_loc": top.loc.numpy()}


def choose_channels(channel_max: np.ndarray, n: int) -> np.ndarray:
    """n channels evenly spaced over the live ones (those that fire at least once)."""
    live = np.flatnonzero(channel_max > 0)
    if len(live) <= n:
        return live
    return live[np.round(np.linspace(0, len(live) - 1, n)).astype(int)]


# ----------------------------------------------------------------------------- receptive fields
@contextlib.contextmanager
def linear_backward(model: nn.Module):
    """Gradients pass every activation module unchanged, so the input gradient of a unit shows its
    whole receptive field, even where the unit saturates (ReLU6 at 6 has zero gradient)."""
    mods = [model.get_submodule(n) for n in activation_layers(model)]
    flags = [(m, getattr(m, "inplace", None)) for m in mods]
    try:
        with Hooks() as hooks:
            for m in mods:
                if hasattr(m, "inplace"):
                    m.inplace = False  # backward hooks cannot see through in-place ops
                hooks.backward(m, lambda mod, gin, gout: (gout[0],))
            yield
    finally:
        for m, flag in flags:
            if flag is not None:
                m.inplace = flag


def receptive_boxes(model: nn.Module, x: torch.Tensor, layer: str, channels: torch.Tensor, locs: torch.Tensor,
                    share: float = 0.1) -> np.ndarray:
    """For image i and unit (channels[i], locs[i]) of `layer`: the input box (y0, y1, x0, x1) where
    the unit's input gradient (activations treated as linear) is at least `share` of its maximum:
    the part of the image that unit sees. Images are independent in eval mode, so one backward
    pass serves the whole batch."""
    store = {}  # the unit's input (pre-activation): its own activation is linear here too
    x = x.clone().requires_grad_(True)
    with Hooks() as hooks, linear_backward(model), torch.enable_grad():
        hooks.forward_pre(model.get_submodule(layer), lambda m, a: store.__setitem__("o", a[0]))
        model(x)
        o = as_maps(store["o"], token_layout(model))
        i = torch.arange(len(x), device=x.device)
        unit = o.flatten(2)[i, channels, locs] if o.dim() == 4 else o[i, channels]
        g, = torch.autograd.grad(unit.sum(), x)
    g = g.abs().sum(1)
    boxes = []
    for gi in g:
        ys, xs = np.nonzero((gi >= share * gi.max()).cpu().numpy()) if gi.max() > 0 else ([], [])
        boxes.append((ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) if len(ys) else (0, gi.shape[0], 0, gi.shape[1]))
    return np.array(boxes, dtype=np.int32)


# ----------------------------------------------------------------------------- filters
def first_layer_filters(model: nn.Module, input_size: int, max_filters: int = 32) -> tuple[np.ndarray, str]:
    """The first layer's weights as RGB tiles in [0, 1] (0.5 = zero weight): Conv2d kernels, or
    for a fully connected first layer each unit's weights over the image."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels in (1, 3) and m.groups == 1:
            w = m.weight.detach().float().cpu()
            break
        if isinstance(m, nn.Linear) and m.in_features % (input_size * input_size) == 0:
            c = m.in_features // (input_size * input_size)
            if c in (1, 3):
                w = m.weight.detach().float().cpu().view(-1, c, input_size, input_size)
                break
    else:
        return np.zeros((0, 1, 1, 3), np.float32), ""
    w = w[:max_filters]
    w = w / (2 * w.abs().flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)) + 0.5
    if w.shape[1] == 1:
        w = w.expand(-1, 3, -1, -1)
    return w.permute(0, 2, 3, 1).numpy(), name


# ----------------------------------------------------------------------------- activation grids
@torch.no_grad()
def activation_grids(net: nn.Module, x: torch.Tensor, layers: list[str], channels: int) -> dict:
    """For each image and layer the `channels` feature maps with the largest mean activation."""
    store = {}
    model = net.model
    layout = token_layout(model)
    with Hooks() as hooks:
        for n in layers:  # a copy: later in-place ops must not change it
            hooks.forward(model.get_submodule(n), lambda m, i, o, n=n: store.__setitem__(n, o.detach().float().clone()))
        net(x)
    out = {}
    for j, n in enumerate(layers):
        o = as_maps(store[n], layout)
        if o.dim() != 4:
            continue
        top = o.mean((2, 3)).topk(min(channels, o.shape[1]), 1).indices
        out[f"grid_{j}"] = o.gather(1, top[..., None, None].expand(-1, -1, *o.shape[2:])).cpu().numpy().astype(np.float16)
        out[f"grid_channels_{j}"] = top.cpu().numpy()
    return out


def run_units(model_path, manifest, audit_set, options: dict, seed: int, device: str, threads: int, out) -> dict:
    t0 = time.time()
    model, spec, net, dev = pixel_model(model_path, seed, device, threads)
    rows = read_manifest(manifest, "test")
    audit = load_audit_set(audit_set)
    xa = audit_images(audit, dev, 0, options["images"])  # only those images become floats
    stages, unit, shapes = resolve_layers(model, (xa[:1] - net.mean) / net.std, options)
    log.info("activations of %s over %d test images; channels of %s", stages, len(rows), unit)
    st = unit_statistics(model, rows, spec, dev, stages, unit, options["top_k"])
    chans = choose_channels(st["layers"][unit]["channel_max"], options["channels"])
    # the top images of the chosen channels, and the box each one's strongest unit sees
    pick = [(c, r) for c in chans for r in range(st["top_index"].shape[0])
            if st["top_values"][r, c] > 0]
    img_idx = np.array([st["top_index"][r, c] for c, r in pick], dtype=np.int64)
    boxes = np.zeros((0, 4), np.int32)
    if pick:
        ds = ImageDataset([rows[i] for i in img_idx], spec["class_names"], eval_transform(spec))
        chans_t = torch.tensor([c for c, _ in pick], device=dev)
        locs_t = torch.tensor([st["top_loc"][r, c] for c, r in pick], device=dev)
        step = auto_batch(spec["input_size"], spec["input_size"], dev)
        boxes = np.concatenate([
            receptive_boxes(model, torch.stack([ds[i][0] for i in range(a, min(a + step, len(ds)))]).to(dev), unit,
                            chans_t[a:a + step], locs_t[a:a + step]) for a in range(0, len(ds), step)])
    # the picked images as the model sees them, once each: the report draws the boxes on these
    unique, pick_view = np.unique(img_idx, return_inverse=True)
    show = display_transform(spec)
    views = np.stack([show(load_rgb(rows[i]["path"])).permute(1, 2, 0).numpy() for i in unique]).astype(np.uint8) \
        if len(unique) else np.zeros((0, spec["input_size"], spec["input_size"], 3), np.uint8)
    filters, first = first_layer_filters(model, spec["input_size"])
    grids = activation_grids(net, xa, stages, options["grid_channels"])
    layers = [{"name": n, "shape": list(shapes[n]), "sparsity": st["layers"][n]["sparsity"],
               "dead": st["layers"][n]["dead"], "channels": st["layers"][n]["channels"]} for n in stages]
    class_idx = list(dict.fromkeys(spec["class_names"].index(r["label"]) for r in rows))
    meta = {"n": len(rows), "layers": layers, "unit_layer": unit, "unit_shape": list(shapes[unit]),
            "unit_dead": st["layers"][unit]["dead"], "unit_channels": st["layers"][unit]["channels"],
            "first_layer": first, "input_size": spec["input_size"], "class_idx": class_idx,
            "class_names": spec["class_names"], "seconds": round(time.time() - t0, 2)}
    save_npz(out, meta, channels=chans, pick_channel=np.array([c for c, _ in pick], dtype=np.int64),
             pick_rank=np.array([r for _, r in pick], dtype=np.int64), pick_image=img_idx,
             pick_value=np.array([st["top_values"][r, c] for c, r in pick], dtype=np.float32), boxes=boxes,
             paths=np.array([rows[i]["path"] for i in img_idx]), views=views, pick_view=pick_view.astype(np.int64),
             filters=filters.astype(np.float32),
             audit_images=audit["images"][:options["images"]], **grids)
    log.info("units: %d stages, %d of %d channels of %s dead (%.1fs)", len(stages), meta["unit_dead"],
             meta["unit_channels"], unit, meta["seconds"])
    return meta


# ----------------------------------------------------------------------------- gradient ascent
