"""The CAM family: Grad-CAM at a block or stage output (for a vision transformer, on the last block's
tokens reshaped to the patch grid), guided Grad-CAM, and CAM for networks that end in global pooling and
one linear layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvaudit import CvauditError
from cvaudit.explain.methods.base import AttributionMethod, NotApplicable, refuse_ensemble
from cvaudit.explain.methods.gradient import GuidedBackprop
from cvaudit.net.hooks import Hooks
from cvaudit.net.pixel_space import inner
from cvaudit.net.tokens import as_maps, blocks, token_layout


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


def _configured(model: nn.Module, layer: str, some: str) -> nn.Module:
    """The module config key explain.gradcam.layer names, or an error listing `some` that exist."""
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise CvauditError(f"config key explain.gradcam.layer: no module '{layer}' in the model; {some}")
    return module


def _conv_layer(net: nn.Module, x: torch.Tensor, layer: str, min_resolution: int) -> nn.Module:
    """The configured layer, or (auto) the last block or stage output (block_outputs) whose feature maps
    are at least `min_resolution` pixels on their short side for inputs like `x`: a 2x2 last layer (small
    inputs) makes a map that covers the whole image and says nothing. At full resolution that is the
    last feature map, CAM's layer, where Grad-CAM equals ReLU(CAM) up to scale. Falls back to the last
    block output with maps more than 1 pixel across."""
    model = inner(net)
    if layer != "auto":
        return _configured(model, layer, f"block outputs: {block_outputs(model)[-6:]}")
    names = dict(model.named_modules())
    if not any(isinstance(m, nn.Conv2d) for m in names.values()):
        raise NotApplicable("the model has no Conv2d layer (it needs spatial feature maps)")
    sizes: dict[str, int] = {}  # in the order the modules finish their forward pass
    with Hooks() as hooks, torch.no_grad():
        for n in block_outputs(model):
            hooks.forward(names[n], lambda m, i, o, n=n: sizes.__setitem__(n, min(o.shape[-2:]))
                          if isinstance(o, torch.Tensor) and o.dim() == 4 else None)
        net(x[:1])
    done = list(sizes)
    big = [n for n in done if sizes[n] >= min_resolution] or [n for n in done if sizes[n] > 1] or done
    if not big:
        raise NotApplicable("the model has no block with spatial feature maps")
    return names[big[-1]]


def _token_layer(net: nn.Module, layer: str) -> nn.Module:
    """For a vision transformer: the configured module, or (auto) the last block's first LayerNorm, whose
    patch tokens feed the attention that the class token reads (the last block's own output reaches the
    head only through the class token, so its patch tokens have no gradient)."""
    model = inner(net)
    if layer != "auto":
        return _configured(model, layer, f"blocks: {blocks(model)[-4:]}")
    last = model.get_submodule(blocks(model)[-1])
    first = getattr(last, "norm1", None) or getattr(last, "layernorm_before", None)  # timm's name, transformers'
    return first if first is not None else last


def token_gradcam(net: nn.Module, x: torch.Tensor, target: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Grad-CAM over a token layer, (N, 1, rows, cols) on the patch grid: the layer's patch tokens as maps
    (the class token dropped), weighted by their mean gradient, positive part."""
    layout = token_layout(inner(net))
    store = {}
    x = x.detach().requires_grad_(True)  # the weights may be frozen: the graph must reach the layer
    with Hooks() as hooks, torch.enable_grad():
        hooks.forward(module, lambda m, i, o: store.__setitem__("a", o))
        score = net(x).gather(1, target.view(-1, 1)).sum()  # images are independent in eval mode
        g, = torch.autograd.grad(score, store["a"])
    a, g = as_maps(store["a"].detach(), layout), as_maps(g, layout)
    if a.dim() != 4:
        raise NotApplicable(f"the layer's output {tuple(a.shape[1:])} is not a token sequence on the patch grid")
    return F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))


def layer_name(net: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in inner(net).named_modules() if m is module)


class GradCAM(AttributionMethod):
    name, label, kind = "gradcam", "Grad-CAM", "cam"
    defaults = {"layer": "auto", "min_resolution": 7}
    reads = ("Selvaraju et al.: the layer's feature maps weighted by the average gradient of the class score, "
             "positive part: bright regions raised the score. Its resolution is that of the layer; by default the "
             "last block or stage output whose maps are at least 7 pixels across (at full resolution CAM's layer, "
             "where Grad-CAM is ReLU(CAM) up to scale); for a vision transformer the last block's tokens, one "
             "value per patch.")

    def layer(self, net, x):
        refuse_ensemble(net, "Grad-CAM weighs one network's feature maps")
        if token_layout(inner(net)) is not None:
            return _token_layer(net, self.options["layer"])
        return _conv_layer(net, x, self.options["layer"], self.options["min_resolution"])

    def attribute(self, net, x, target):
        from captum.attr import LayerAttribution, LayerGradCam

        if token_layout(inner(net)) is not None:
            cam = token_gradcam(net, x, target, self.layer(net, x))
            return F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0].detach()

        cam = LayerGradCam(net, self.layer(net, x)).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].detach()


class GuidedGradCAM(GradCAM):
    name, label, kind = "guided_gradcam", "Guided Grad-CAM", "gradient"
    reads = ("Guided backprop multiplied by Grad-CAM: fine detail, but only inside the regions Grad-CAM found "
             "class-relevant.")

    def attribute(self, net, x, target):
        return GuidedBackprop().attribute(net, x, target) * GradCAM(**self.options).attribute(net, x, target)


class CAM(AttributionMethod):
    name, label, kind = "cam", "CAM", "cam"
    reads = ("Zhou et al.: for a network ending in global average pooling and one linear layer, the last feature "
             "maps weighted by the class's output weights. Positive where the region argues for the class.")

    @staticmethod
    def parts(net: nn.Module):
        """(feature module whose output is pooled, head Linear), or NotApplicable."""
        refuse_ensemble(net, "CAM weighs one network's last feature maps by its head")
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
        with Hooks() as hooks, torch.no_grad():
            hooks.forward(pool, lambda m, i, o: feats.__setitem__("a", i[0]))
            net(x)
        a = feats["a"]
        if a.dim() != 4 or a.shape[1] != head.in_features:
            raise NotApplicable("the pooled features do not feed the linear head directly")
        cam = torch.einsum("nk,nkhw->nhw", head.weight[target], a)[:, None]
        return F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0].detach()
