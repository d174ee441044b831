"""Methods for vision transformers, which read the attention between tokens: attention rollout (Abnar &
Zuidema 2020) and Chefer et al.'s gradient-weighted attention relevance ("Generic attention-model
explainability", ICCV 2021, rule 6 for self-attention encoders). Both need the attention weights, which
timm's fused attention never forms: `attention_weights` switches every Attention module to the explicit
softmax path for one call and reads the weights where they pass the attention dropout; a model that records
its own (`attention_weights()`, a Hugging Face transformer: cvaudit.net.hf) is read through that."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from cvaudit.explain.methods.base import AttributionMethod, NotApplicable
from cvaudit.net.hooks import Hooks
from cvaudit.net.pixel_space import inner
from cvaudit.net.tokens import token_layout


def attention_modules(net: nn.Module) -> list[nn.Module]:
    """Every block's self-attention (timm's Attention: `fused_attn` and `attn_drop`), first to last."""
    return [m for m in inner(net).modules() if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)]


@contextlib.contextmanager
def attention_weights(net: nn.Module):
    """Yields a list that each forward pass fills with every block's attention weights (N, heads, T, T),
    first block first. Fused attention is switched off inside and restored after, whatever happens."""
    own = getattr(inner(net), "attention_weights", None)
    if callable(own):
        if not inner(net).global_attention:
            raise NotApplicable(f"{inner(net).model_type}: its attention is not global over the patches (windows, "
                                "or no attention)")
        with own() as found:
            yield found
        return
    mods = attention_modules(net)
    if token_layout(inner(net)) is None or not mods:
        raise NotApplicable("the model is not a vision transformer with timm attention blocks "
                            "(patch_embed, blocks, Attention)")
    found: list[torch.Tensor] = []
    flags = [m.fused_attn for m in mods]
    try:
        with Hooks() as hooks:
            for m in mods:
                m.fused_attn = False
                hooks.forward(m.attn_drop, lambda mod, i, o: found.append(o))
            yield found
    finally:
        for m, flag in zip(mods, flags):
            m.fused_attn = flag


def _patch_relevance(r: torch.Tensor, prefix: int, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Token-to-token relevance (N, T, T) as a map over the image: the class token's row (the mean of the
    patch tokens' rows for a model without one), its patch columns on the grid, upsampled bilinearly."""
    rows = r[:, 0] if prefix else r[:, prefix:].mean(1)
    m = rows[:, prefix:].reshape(len(r), 1, *grid)
    return F.interpolate(m, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]


class AttentionRollout(AttributionMethod):
    name, label, kind = "attention_rollout", "Attention rollout", "cam"
    defaults = {"head_fusion": "mean", "residual": 0.5}
    reads = ("Abnar & Zuidema: each block's attention (heads averaged, plus the residual connection as identity, "
             "rows renormalised), multiplied from the first block to the last; the class token's row says how much "
             "each patch flowed into it. It ignores the class asked for: the same map for every class.")

    def attribute(self, net, x, target):
        layout = token_layout(inner(net))
        with attention_weights(net) as attn, torch.no_grad():
            net(x)
        fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
        alpha = float(self.options["residual"])
        eye = torch.eye(attn[0].shape[-1], device=x.device, dtype=attn[0].dtype)
        r = eye.expand(len(x), -1, -1)
        for a in attn:
            a = alpha * eye + (1 - alpha) * fuse[self.options["head_fusion"]](a.float())
            r = (a / a.sum(-1, keepdim=True)) @ r
        return _patch_relevance(r, layout.prefix, x, layout.grid).detach()


class TransformerAttribution(AttributionMethod):
    name, label, kind = "transformer_attribution", "Attention × gradient (Chefer)", "cam"
    reads = ("Chefer et al. (2021): every block's attention weighted by the class score's gradient with respect to "
             "it, positive part, heads averaged, accumulated from the first block to the last through the residual "
             "connections (R ← R + Ā·R); the class token's row over the patches. Class-specific, unlike rollout.")

    def attribute(self, net, x, target):
        layout = token_layout(inner(net))
        x = x.detach().requires_grad_(True)  # the weights may be frozen: the graph must reach the attention
        with attention_weights(net) as attn, torch.enable_grad():
            score = net(x).gather(1, target.view(-1, 1)).sum()  # images are independent in eval mode
            grads = torch.autograd.grad(score, attn)
        eye = torch.eye(attn[0].shape[-1], device=x.device)
        r = eye.expand(len(x), -1, -1)
        for a, g in zip(attn, grads):
            r = r + (g * a).clamp(min=0).mean(1).float() @ r
        return _patch_relevance(r - eye, layout.prefix, x, layout.grid).detach()
