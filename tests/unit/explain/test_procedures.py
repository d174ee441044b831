"""Procedures that match their names: Grad-CAM's automatic layer is a block output (CAM's layer
at full resolution, where Grad-CAM is ReLU(CAM)); deletion/insertion equals an independent implementation
of RISE's evaluation procedure; ties in a map are broken by a seeded total order, whatever the sort."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from cvaudit.explain.methods import get_method, layer_name
from cvaudit.explain.methods.cam import _conv_layer
from cvaudit.explain.trust import _order, deletion_insertion
from cvaudit.net.models import build_model
from cvaudit.net.pixel_space import PixelSpace, image_generator


@pytest.mark.parametrize("arch, size, want", [
    ("simple_cnn", 28, "features.9"),  # the end of the second conv block (7x7), not a conv inside one
    ("timm:tf_efficientnet_lite0", 64, "blocks.2"),  # a stage output (8x8), never blocks.3.0.conv_pw
    ("timm:tf_efficientnet_lite0", 224, "bn2"),  # the last feature map: CAM's layer
    ("torchvision:resnet18", 224, "layer4"),
])
def test_gradcams_automatic_layer_is_a_block_or_stage_output(arch, size, want):
    opts = {"channels": [32, 64, 128]} if arch == "simple_cnn" else {}
    m = build_model({"arch": arch, "arch_options": opts, "weights": "none", "num_classes": 10, "input_size": size})
    net = PixelSpace(m.eval(), [0.5] * 3, [0.5] * 3)
    assert layer_name(net, _conv_layer(net, torch.rand(1, 3, size, size), "auto", 7)) == want


def test_gradcam_at_cams_layer_is_relu_cam_up_to_scale():
    """On the real pretrained EfficientNet-Lite0 and real photos (Selvaraju et al., section 3.1)."""
    from torchvision.transforms import v2 as T

    from cvaudit.core.images import load_rgb
    from cvaudit.data.sources import foolbox_dir
    lite = build_model({"arch": "timm:tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0",
                        "input_size": 224, "num_classes": 1000, "keep_head": True}).eval()
    net = PixelSpace(lite, [0.5] * 3, [0.5] * 3).eval()
    tf = T.Compose([T.ToImage(), T.Resize((224, 224)), T.ToDtype(torch.float32, scale=True)])
    x = torch.stack([tf(load_rgb(p)) for p in sorted(foolbox_dir().glob("imagenet_0*.jpg"))[:2]])
    t = net(x).argmax(1)
    from captum.attr import LayerGradCam
    layer = _conv_layer(net, x, "auto", 7)  # automatic at full resolution: the last feature map
    pool, head = get_method("cam").parts(net)
    feats = {}
    h = pool.register_forward_hook(lambda mod, i, o: feats.__setitem__("a", i[0]))
    with torch.no_grad():
        net(x)
    h.remove()
    cam = torch.einsum("nk,nkhw->nhw", head.weight[t], feats["a"]).clamp(min=0)  # at the layer's resolution
    grad_cam = LayerGradCam(net, layer).attribute(x, target=t, relu_attributions=True)[:, 0].detach()
    assert grad_cam.shape == cam.shape == (2, 7, 7)
    for g, c in zip(grad_cam, cam):  # Grad-CAM's weights are CAM's divided by the 7 x 7 of global pooling
        assert torch.allclose(g, c / 49, rtol=1e-4, atol=1e-6 * float(c.max()))


# ----------------------------------------------------------------------------- RISE, independently
def rise_reference(model, img, c, explanation, mode, step):
    """Petsiuk et al.'s CausalMetric.single_run, transcribed for a model on normalised images with a
    softmax head: substrate zeros (deletion) or RISE's blur (insertion), `step` pixels a step, AUC by their
    auc(): (sum - first/2 - last/2) / (n - 1)."""
    klen, ksig = 11, 5
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, ksig)
    kern = np.zeros((3, 3, klen, klen), "float32")
    kern[0, 0], kern[1, 1], kern[2, 2] = k, k, k
    kern = torch.from_numpy(kern)

    def blur(x):
        return F.conv2d(x, kern, padding=klen // 2)

    _, _, h, w = img.shape
    hw = h * w
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = img.clone(), torch.zeros_like(img)
    else:
        start, finish = blur(img), img.clone()
    scores = np.empty(n_steps + 1)
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
    for i in range(n_steps + 1):
        pred = torch.softmax(model(start), 1)
        scores[i] = pred[0, c]
        if i < n_steps:
            coords = salient_order[:, step * i:step * (i + 1)]
            start.cpu().numpy().reshape(1, 3, hw)[0, :, coords] = finish.cpu().numpy().reshape(1, 3, hw)[0, :, coords]
    return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)


def test_deletion_and_insertion_equal_an_independent_implementation_of_rise():
    torch.manual_seed(0)
    model = build_model({"arch": "simple_cnn", "arch_options": {"channels": [8, 16]}, "weights": "none",
                         "num_classes": 3, "input_size": 28}).eval()
    mean, std = [0.2, 0.5, 0.7], [0.3, 0.25, 0.2]
    net = PixelSpace(model, mean, std).eval()
    x = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(2))  # no ties: one order for both
    target = net(x).argmax(1)
    ours = deletion_insertion(net, x, target, maps, steps=8, batch_size=18)  # 784 px / 8 = 98 px a step
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        for i in range(3):
            img = ((x[i:i + 1] - m) / s).contiguous()
            for mode, key in (("del", "deletion_auc"), ("ins", "insertion_auc")):
                ref = rise_reference(model, img.clone(), int(target[i]), maps[i].numpy(), mode, step=98)
                assert ours[key][i] == pytest.approx(ref, abs=1e-6), (i, mode)


# ----------------------------------------------------------------------------- ties
def test_ties_are_broken_by_a_seeded_total_order_not_by_the_sort():
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.integers(0, 4, (3, 20, 20)).astype(np.float32))  # LIME-like: 400 pixels, 4 values
    order = _order(maps, seed=5)
    for j in range(3):  # the same order from numpy's lexsort on (seeded key, value): a stable and an unstable sort agree
        perm = torch.randperm(400, generator=image_generator(5, j)).numpy()
        key = np.empty(400, int)
        key[perm] = np.arange(400)
        want = np.lexsort((key, -maps[j].reshape(-1).numpy()))
        assert np.array_equal(order[j].numpy(), want)
    net = PixelSpace(build_model({"arch": "simple_cnn", "arch_options": {"channels": [8]}, "weights": "none",
                                  "num_classes": 2, "input_size": 20}).eval(), [0.5] * 3, [0.5] * 3).eval()
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(3, dtype=torch.long)
    a = deletion_insertion(net, x, t, maps, steps=5, seed=5)
    b = deletion_insertion(net, x, t, maps.clone(), steps=5, seed=5, index=[0, 1, 2])
    assert np.array_equal(a["deletion_auc"], b["deletion_auc"]) and np.array_equal(a["insertion_auc"], b["insertion_auc"])
    assert not torch.equal(_order(maps, seed=5), _order(maps, seed=6))  # the seed decides among equals


# ----------------------------------------------------------------------------- LIME and SHAP state what they did
class Brightness(torch.nn.Module):
    """p(class 0) = 0.2 + 0.6 * mean brightness (linear in which superpixels are shown), or a step of it."""

    def __init__(self, step: bool):
        super().__init__()
        self.step, self.w = step, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b = x.mean((1, 2, 3))
        p = (0.2 + 0.6 * (b > 0.25).float()) if self.step else 0.2 + 0.6 * b
        p = p + 0 * self.w
        return torch.stack([p.log(), (1 - p).log()], 1)


def test_lime_states_its_surrogates_fit_on_fresh_samples():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    t = torch.zeros(2, dtype=torch.long)
    fits = {}
    for step in (False, True):
        m = get_method("lime", samples=200, segments=12, hide_color="black", check_samples=64)
        m.attribute(Brightness(step), x, t)
        fits[step] = [r["r2_fresh"] for r in m.records]
        assert len(m.records) == 2 and all(r["r2_own"] > 0 for r in m.records)
    assert min(fits[False]) > 0.9  # the model is linear in the superpixels: the surrogate predicts it
    assert max(fits[True]) < min(fits[False]) - 0.2  # a step is not: the fresh-sample R² says so
    with pytest.raises(Exception, match="explain.lime.hide_color"):
        get_method("lime", hide_color="pink").attribute(Brightness(False), x, t)


def test_shaps_budget_scales_with_the_image_and_its_maps_state_their_regions():
    shap = get_method("shap")
    assert shap.evals(28, 28) == 128 and shap.evals(224, 224) == 1024 and get_method("shap", evals=300).evals(224, 224) == 300
