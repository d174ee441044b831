"""Vision transformers as first-class models: token layouts, Grad-CAM on tokens (equal to pytorch-grad-cam's),
attention rollout and Chefer et al.'s relevance against their definitions, a known answer on a ViT built to
read one quadrant, and every registered method either running the shared suite or refusing with its reason."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvaudit.explain.methods import METHODS, NotApplicable, get_method
from cvaudit.explain.methods.cam import token_gradcam
from cvaudit.explain.methods.transformer import attention_modules
from cvaudit.net.pixel_space import PixelSpace
from cvaudit.net.tokens import as_maps, prefix_tokens, token_layout

from tiny_models import pixel_vit

SMALL = {"integrated_gradients": {"steps": 8}, "lime": {"samples": 40, "segments": 9}, "shap": {"evals": 40},
         "kernel_shap": {"samples": 60, "segments": 9}, "shapley_sampling": {"samples": 1, "segments": 9},
         "deeplift_shap": {"background": 2}}
REFUSED = {"deconvnet": "GELU", "guided_backprop": "GELU", "guided_gradcam": "GELU", "cam": "global average pooling",
           "lrp": "attention"}


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_tokens_become_maps_row_by_row_and_the_class_token_stays_apart():
    net = pixel_vit()
    layout = token_layout(net)
    assert layout.prefix == 1 and layout.grid == (4, 4) and layout.tokens == 17
    o = torch.arange(2 * 17 * 3, dtype=torch.float32).view(2, 17, 3)
    maps = as_maps(o, layout)
    assert maps.shape == (2, 3, 4, 4)
    assert torch.equal(maps[1, 2, 0, 1], o[1, 1 + 1, 2]) and torch.equal(maps[0, 0, 2, 3], o[0, 1 + 2 * 4 + 3, 0])
    assert torch.equal(prefix_tokens(o, layout), o[:, 0])
    conv = torch.rand(2, 3, 4, 4)
    assert as_maps(conv, layout) is conv and token_layout(nn.Conv2d(3, 3, 1)) is None


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m == "shap" else m for m in sorted(METHODS)])
def test_every_method_runs_on_a_vit_or_refuses_it_with_the_reason(name):
    net = pixel_vit()
    flags = [m.fused_attn for m in attention_modules(net)]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2])
    method = lambda: get_method(name, seed=3, **SMALL.get(name, {}))  # noqa: E731
    if name in REFUSED:
        with pytest.raises(NotApplicable, match=REFUSED[name]):
            method().attribute(net, x, t)
        return
    a, b = method().attribute(net, x, t), method().attribute(net, x, t)
    assert a.shape == (3, 32, 32) and torch.isfinite(a).all() and torch.equal(a, b)
    assert _hooks(net) == 0 and [m.fused_attn for m in attention_modules(net)] == flags


@pytest.mark.parametrize("name", ["attention_rollout", "transformer_attribution"])
def test_attention_methods_refuse_a_cnn(name):
    from tiny_models import pixel_cnn
    with pytest.raises(NotApplicable, match="vision transformer"):
        get_method(name).attribute(pixel_cnn(input_size=32), torch.rand(1, 3, 32, 32), torch.tensor([0]))


def _attention_by_hand(vit, x):
    """Every block's attention (N, heads, T, T) computed from the block's weights, not read from the model,
    and the logits computed from them (so dS/dA exists)."""
    tokens = vit._pos_embed(vit.patch_embed(x))
    found = []
    for blk in vit.blocks:
        attn = blk.attn
        h = blk.norm1(tokens)
        n, t, d = h.shape
        q, k, v = attn.qkv(h).reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
        found.append(a)
        tokens = tokens + blk.ls1(attn.proj((a @ v).transpose(1, 2).reshape(n, t, d)))
        tokens = tokens + blk.ls2(blk.mlp(blk.norm2(tokens)))
    return found, vit.forward_head(vit.norm(tokens))


def test_rollout_and_chefer_relevance_follow_their_definitions():
    net = pixel_vit(seed=4)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([2, 0])
    attn, logits = _attention_by_hand(net.model, (x - 0.5) / 0.5)
    assert torch.allclose(logits, net(x), atol=1e-5)  # the hand-made pass is the model's
    eye = torch.eye(17)
    r = eye.expand(2, -1, -1)
    for a in attn:  # Abnar & Zuidema: (A + I) / 2 per block, heads averaged, multiplied first to last
        r = (0.5 * a.mean(1) + 0.5 * eye) @ r
    expected = F.interpolate(r[:, 0, 1:].reshape(2, 1, 4, 4), size=(32, 32), mode="bilinear")[:, 0]
    got = get_method("attention_rollout").attribute(net, x, t)
    assert torch.allclose(got, expected.detach(), atol=1e-5)
    assert not torch.allclose(got, get_method("attention_rollout", residual=0.0).attribute(net, x, t))
    # Chefer et al.: R <- R + mean_h((dS/dA * A)^+) R, with dS/dA taken through the model's own attention
    grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), attn)
    r = eye.expand(2, -1, -1)
    for a, g in zip(attn, grads):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    expected = F.interpolate(r[:, 0, 1:].reshape(2, 1, 4, 4), size=(32, 32), mode="bilinear")[:, 0]
    got = get_method("transformer_attribution").attribute(net, x, t)
    assert torch.allclose(got, expected.detach(), atol=1e-5) and expected.abs().sum() > 0


def test_token_gradcam_equals_pytorch_grad_cam():
    """The independent implementation: pytorch-grad-cam's GradCAM with its ViT recipe (the last block's norm1,
    tokens reshaped to the grid), compared on the patch grid before either upsamples."""
    from pytorch_grad_cam.grad_cam import (
        GradCAM as TrustedGradCAM,  # not the package: cvaudit.explain.trust may stub it
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = pixel_vit(seed=2)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 2, 1])
    layer = net.model.blocks[-1].norm1
    ours = token_gradcam(net, x, t, layer)[:, 0]
    grid = lambda o: o[:, 1:].reshape(len(o), 4, 4, o.shape[-1]).permute(0, 3, 1, 2)  # noqa: E731 — their recipe
    cam = TrustedGradCAM(model=net, target_layers=[layer], reshape_transform=grid)
    targets = [ClassifierOutputTarget(int(c)) for c in t]
    cam(input_tensor=x, targets=targets)
    acts, grads = (t[0].cpu().numpy() for t in (cam.activations_and_grads.activations, cam.activations_and_grads.gradients))
    theirs = np.maximum(cam.get_cam_image(x, layer, targets, acts, grads), 0)
    cam.activations_and_grads.release()
    assert np.allclose(ours.numpy(), theirs, atol=1e-6) and theirs.max() > 0
    assert get_method("gradcam").attribute(net, x, t).shape == (3, 32, 32)


class RegionViT(nn.Module):
    """A one-block timm ViT whose class depends only on the top-right quadrant, by construction, as RegionNet
    (tests/unit/explain/test_explain.py) for CNNs: the input is masked to that quadrant (so every other patch token is
    exactly 0), the class token's query matches only keys carrying the quadrant's position code, the values
    carry the patches' content, the MLP is zero and the head reads the class token's content. Top-right, not
    top-left: a grid read column by column would move it to the bottom-left and fail."""

    def __init__(self):
        super().__init__()
        import timm
        torch.manual_seed(0)
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                                embed_dim=8, num_heads=1, num_classes=2)
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., :16, 16:] = 1
        self.register_buffer("mask", mask)
        blk = vit.blocks[0]
        blk.norm1, vit.norm = nn.Identity(), nn.Identity()
        with torch.no_grad():
            w = vit.patch_embed.proj.weight
            w.zero_()
            w[:4] = torch.randn(4, 3, 8, 8) * 0.2  # content in dims 0-3
            vit.patch_embed.proj.bias.zero_()
            vit.pos_embed.zero_()
            grid = vit.pos_embed[0, 1:].view(4, 4, 8)
            grid[:2, 2:, 4] = 1.0  # the quadrant's position code (dim 4)
            vit.cls_token.zero_()
            vit.cls_token[0, 0, 5] = 1.0  # the class token's code (dim 5)
            qkv = blk.attn.qkv
            qkv.weight.zero_()
            qkv.bias.zero_()
            qkv.weight[0, 5] = 20.0  # query: the class token asks ...
            qkv.weight[8, 4] = 20.0  # key: ... for the quadrant's patches
            qkv.weight[16:20, :4] = torch.eye(4)  # values: the content
            blk.attn.proj.weight.copy_(torch.eye(8))
            blk.attn.proj.bias.zero_()
            blk.mlp.fc2.weight.zero_()
            blk.mlp.fc2.bias.zero_()
            vit.head.weight.zero_()
            vit.head.weight[0, :4] = torch.tensor([1.0, -1.0, 2.0, 0.5])
            vit.head.weight[1, :4] = -vit.head.weight[0, :4]
            vit.head.bias.zero_()
        self.vit = vit
        self.patch_embed, self.blocks, self.num_prefix_tokens = vit.patch_embed, vit.blocks, vit.num_prefix_tokens

    def forward(self, x):
        return self.vit(x * self.mask)


@pytest.mark.parametrize("name", ["gradcam", "attention_rollout", "transformer_attribution", "saliency",
                                  "integrated_gradients"])
def test_known_answer_on_a_vit_that_reads_one_quadrant(name):
    net = PixelSpace(RegionViT(), [0.5] * 3, [0.5] * 3).eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        t = net(x).argmax(1)  # explain the predicted class: its evidence is there
        moved = x.clone()
        moved[..., 16:, :] = torch.rand(6, 3, 16, 32)
        moved[..., :16, :16] = torch.rand(6, 3, 16, 16)
        assert torch.allclose(net(moved), net(x))  # by construction: nothing outside the quadrant counts
    a = get_method(name).attribute(net, x, t).abs()
    inside = a[:, :16, 16:].sum((1, 2)) / a.sum((1, 2)).clamp(min=1e-12)
    assert (inside > 0.6).all(), f"{name}: share of mass in the quadrant {inside.tolist()}"  # area share 0.25


def test_the_patch_embedding_has_no_class_token_and_still_becomes_maps():
    layout = token_layout(pixel_vit())
    patches = torch.rand(2, 16, 5)
    assert torch.equal(as_maps(patches, layout)[:, :, 1, 2], patches[:, 6]) and prefix_tokens(patches, layout) is None
    assert as_maps(torch.rand(2, 9, 5), layout).shape == (2, 9, 5)  # another length: not this layout's tokens
