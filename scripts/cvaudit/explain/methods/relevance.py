"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) through zennit, the maintained
LRP library: the EpsilonPlusFlat composite the literature recommends for CNNs (flat rule on the first layer,
z+ on the other convolutions, epsilon on the dense layers), with every batch norm that directly follows a
convolution or linear layer merged into it first (zennit's canonizer, the pairs found by tracing one pass).

A model with attention or layer norm (a vision transformer) is refused: zennit has no rules for them.
What zennit refuses, in effect, elsewhere: it puts its rules on modules only. An operation written as a function in a
model's forward (a residual `x + y`, `F.relu`, a reshape) and a module it has no rule for (max-pooling,
SiLU, GELU, attention) pass the plain gradient, and a batch norm that does not follow a linear layer
directly is not merged. Relevance is then no longer conserved: each map's sum is checked against the
class logit, and the report flags a model on which it is lost or created."""
from __future__ import annotations

import torch
from torch import nn

from cvaudit.explain.methods.base import AttributionMethod, Completeness, NotApplicable, out_of_place, refuse_ensemble


def batchnorm_pairs(model: nn.Module, x: torch.Tensor) -> list[tuple[list[str], str]]:
    """[([linear name], batch-norm name)] for every batch norm whose input is exactly the output of a
    convolution or linear module in one forward pass on `x` (zennit's NamedMergeBatchNorm format)."""
    from zennit.types import BatchNorm, Linear

    names = {m: n for n, m in model.named_modules()}
    produced, pairs, handles = {}, [], []

    def linear_hook(m, inp, out):
        produced[id(out)] = names[m]

    def bn_hook(m, inp):
        if id(inp[0]) in produced:
            pairs.append(([produced[id(inp[0])]], names[m]))

    for m in model.modules():
        if isinstance(m, Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, BatchNorm):
            handles.append(m.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return pairs


class LRP(Completeness, AttributionMethod):
    name, label = "lrp", "LRP (ε-z⁺-flat)"
    defaults = {"tolerance": 0.05}
    reads = ("Bach et al.: the class logit redistributed backwards layer by layer (flat rule on the first layer, z⁺ on the "
             "other convolutions, ε on dense layers; zennit), each pixel's share of the score; red is evidence for "
             "the class. Positive-heavy by construction, sharper than the gradient.")
    promise = "its relevance is conserved: the map sums to the class logit"
    caveat = ("biases absorb relevance, and zennit's rules sit on modules only: a residual sum, max-pooling, SiLU or GELU "
              "passes the plain gradient and a batch norm that does not directly follow a linear layer stays unmerged")

    def attribute(self, net, x, target):
        refuse_ensemble(net, "LRP's rules follow one network's layers down to its input")
        from zennit.attribution import Gradient
        from zennit.canonizers import NamedMergeBatchNorm
        from zennit.composites import EpsilonPlusFlat
        from zennit.types import Linear

        from cvaudit.net.pixel_space import PixelSpace

        inner, xin = (net.model, (x - net.mean) / net.std) if isinstance(net, PixelSpace) else (net, x)
        if not any(isinstance(m, Linear) for m in inner.modules()):
            raise NotApplicable("LRP needs convolution or linear layers to put its rules on")
        attention = sorted({type(m).__name__ for m in inner.modules()
                            if isinstance(m, (nn.LayerNorm, nn.MultiheadAttention)) or type(m).__name__.endswith("Attention")})
        if attention:  # a vision transformer: relevance through attention needs rules zennit does not have
            raise NotApplicable(f"the model has {', '.join(attention)} layers: zennit has no LRP rules for attention or "
                                "layer norm, so relevance would pass them as plain gradient and its conservation would "
                                "not hold (on a 4-block ViT the maps miss the logit by a factor of 10^13)")
        xin = xin.detach()
        with out_of_place(inner):
            composite = EpsilonPlusFlat(canonizers=[NamedMergeBatchNorm(batchnorm_pairs(inner, xin))])
            with Gradient(model=inner, composite=composite) as attributor:
                out, rel = attributor(xin, lambda o: torch.nn.functional.one_hot(target, o.shape[1]).to(o.dtype) * o)
        self.check(rel.sum((1, 2, 3)), out.gather(1, target.view(-1, 1))[:, 0])
        return rel.sum(1).detach()
