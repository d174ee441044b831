"""Every attribution method passes one suite; known answers; the trust checks behave as the papers say."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvaudit import CvauditError
from tiny_models import tiny_cnn
from cvaudit.shards import run_stage
from cvaudit.io import load_npz as load_maps
from cvaudit.methods import METHODS, AttributionMethod, GradCAM, NotApplicable, attribute_batched, get_method
from cvaudit.pixels import PixelSpace
from cvaudit.models import build_model, save_model
from cvaudit.trust import agreement, cascade_cuts, cascading_randomisation, deletion_insertion, rank_corr

SMALL = {"integrated_gradients": {"steps": 8}, "lime": {"samples": 60, "segments": 16}, "shap": {"evals": 60}}


def _cnn(seed=0, **kw):
    return tiny_cnn(seed, **{"input_size": 32, "class_names": ["a", "b", "c"], "keep_head": False, **kw})


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _method(name, **kw):
    return get_method(name, **{**SMALL.get(name, {}), **kw})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_shape_finite_deterministic_no_hooks(name):
    model, spec = _cnn()
    net = PixelSpace(model, spec["mean"], spec["std"]).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = _method(name, seed=3).attribute(net, x, t)
    b = _method(name, seed=3).attribute(net, x, t)
    assert a.shape == (3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b), "not deterministic under a seed"
    assert _hooks(net) == 0, "hooks left on the model"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not m.inplace for m in net.modules() if isinstance(m, nn.ReLU))  # SimpleCNN's own setting kept


class RegionNet(nn.Module):
    """Class 0's logit depends only on the top-left quadrant: the input is masked to that quadrant, then
    conv (no bias) -> ReLU -> global average pooling -> linear. Every feature outside the quadrant is 0."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., :16, :16] = 1
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.stack([torch.full((6,), 10.0), torch.full((6,), -10.0)]))
            self.fc.bias.fill_(-2.0)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x * self.mask))).flatten(1))


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"random"}))
def test_known_answer_mass_in_the_region_that_matters(name):
    net = PixelSpace(RegionNet(), [0.5] * 3, [0.5] * 3).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = _method(name, window=8, stride=4) if name == "occlusion" else _method(name)
    a = maps.attribute(net, x, torch.zeros(4, dtype=torch.long)).abs()
    inside = a[:, :16, :16].sum((1, 2)) / a.sum((1, 2)).clamp(min=1e-12)
    assert (inside > 0.6).all(), f"{name}: share of mass in the relevant quadrant {inside.tolist()}"  # area share 0.25


def test_gradcam_equals_the_direct_computation():
    model, spec = _cnn()
    x = torch.randn(5, 3, 32, 32)
    target = torch.tensor([0, 1, 2, 0, 1])
    layer = model.get_submodule("features")  # the automatic layer: the last block output (8x8 at 32 px)
    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.update(a=o))
    out = model(x)
    h.remove()
    grads = torch.autograd.grad(out.gather(1, target[:, None]).sum(), acts["a"])[0]
    cam = F.relu((grads.mean((2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=(32, 32), mode="bilinear")[:, 0]
    got = get_method("gradcam").attribute(model, x, target)
    assert torch.allclose(got, expected.detach(), atol=1e-5) and expected.abs().sum() > 0
    assert _hooks(model) == 0


def test_auto_layer_skips_block_outputs_too_small_to_localise():
    lite = build_model({"arch": "timm:tf_efficientnet_lite0", "weights": "none", "input_size": 64, "num_classes": 3}).eval()
    x = torch.randn(2, 3, 64, 64)
    names = {id(m): n for n, m in lite.named_modules()}
    assert names[id(GradCAM(min_resolution=1).layer(lite, x))] == "bn2"  # the last feature map, 2x2 at 64 px
    assert names[id(GradCAM().layer(lite, x))] == "blocks.2"  # the last stage output still at 8x8
    assert names[id(GradCAM().layer(lite, torch.randn(1, 3, 224, 224)))] == "bn2"  # 7x7 at 224 px: CAM's layer
    assert _hooks(lite) == 0
    with pytest.raises(CvauditError, match="no module 'nope'"):
        GradCAM(layer="nope").layer(lite, x)


def test_guided_backprop_handles_relu6_and_refuses_other_activations():
    lite = build_model({"arch": "timm:tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0",
                        "input_size": 64, "num_classes": 1000, "keep_head": True}).eval()
    net = PixelSpace(lite, [0.5] * 3, [0.5] * 3).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 2])
    plain, guided, deconv = (get_method(n).attribute(net, x, t) for n in ("saliency", "guided_backprop", "deconvnet"))
    # the ReLU6 modules really were modified: not a plain gradient under another name
    assert rank_corr(plain.numpy(), guided.numpy()).mean() < 0.9 and not torch.allclose(plain, guided)
    assert not torch.allclose(guided, deconv) and _hooks(net) == 0
    assert all(m.inplace for m in lite.modules() if isinstance(m, nn.ReLU6))  # restored
    b0 = build_model({"arch": "timm:efficientnet_b0", "weights": "none", "input_size": 64, "num_classes": 3}).eval()
    with pytest.raises(NotApplicable, match="SiLU"):
        get_method("guided_backprop").attribute(PixelSpace(b0, [0.5] * 3, [0.5] * 3), x, torch.tensor([0, 1]))


def test_cam_needs_pooling_and_a_linear_head():
    mlp, _ = _cnn(arch="mlp", arch_options={"hidden": [8]})
    with pytest.raises(NotApplicable):
        get_method("cam").attribute(mlp, torch.rand(1, 3, 32, 32), torch.tensor([0]))


class QuadrantEnergy(nn.Module):
    """Class 0's logit grows with the mean of x^2 over the top-left quadrant: deleting (blacking out) those
    pixels lowers it monotonically, and revealing them on a blurred copy (less variance) raises it."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(12.0))

    def forward(self, x):
        e = (x[:, :, :16, :16] ** 2).mean((1, 2, 3))
        return torch.stack([self.scale * (e - 1 / 3) + 1, torch.zeros_like(e)], 1)


def test_deletion_insertion_rewards_the_right_pixels():
    net = QuadrantEnergy()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    t = torch.zeros(4, dtype=torch.long)
    good = torch.zeros(4, 32, 32)
    good[:, :16, :16] = 1 + torch.rand(4, 16, 16)
    bad = 1 - good.clamp(max=1)  # everything but the region first
    g, b = (deletion_insertion(net, x, t, m, steps=8, batch_size=20) for m in (good, bad))
    assert g["deletion"].shape == (4, 9) and np.allclose(g["deletion"][:, 0], g["insertion"][:, -1], atol=1e-5)
    assert (np.diff(g["deletion"][:, :3], axis=1) < 0).all()  # steps 1-2 delete the quadrant (256 of 1024 px)
    assert (g["deletion_auc"] < b["deletion_auc"] - 0.2).all() and (g["insertion_auc"] > b["insertion_auc"]).all()


class EdgeDetector(AttributionMethod):
    """A map that ignores the model: Sobel edge magnitude of the image."""
    name, label, kind = "edges", "Edge detector", "reference"

    def attribute(self, net, x, target):
        k = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
        g = x.mean(1, keepdim=True)
        gx, gy = F.conv2d(g, k.view(1, 1, 3, 3), padding=1), F.conv2d(g, k.t().reshape(1, 1, 3, 3), padding=1)
        return (gx ** 2 + gy ** 2).sqrt()[:, 0]


def test_randomisation_check_separates_a_gradient_method_from_an_edge_detector():
    lite = build_model({"arch": "timm:tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0",
                        "input_size": 96, "num_classes": 1000, "keep_head": True}).eval()
    net = PixelSpace(lite, [0.5] * 3, [0.5] * 3).eval()
    from cvaudit.data import foolbox_dir, load_rgb
    from torchvision.transforms import v2 as T
    tf = T.Compose([T.ToImage(), T.Resize((96, 96)), T.ToDtype(torch.float32, scale=True)])
    x = torch.stack([tf(load_rgb(p)) for p in sorted(foolbox_dir().glob("imagenet_0*.jpg"))[:3]])
    t = net(x).argmax(1)
    results = {}
    for m in (get_method("saliency"), EdgeDetector()):
        maps = m.attribute(net, x, t).numpy()
        results[m.name] = cascading_randomisation(m, net, x, t, maps, stages=3, seed=0)
    assert results["edges"]["final_rank_corr"] > 0.99
    assert results["saliency"]["final_rank_corr"] < 0.5
    assert len(results["saliency"]["stages"]) == 3 and results["saliency"]["stages"][0]["randomised_layers"] == 1
    assert _hooks(net) == 0


def test_cascade_cuts_and_agreement():
    assert cascade_cuts(10, 3) == [1, 5, 10] and cascade_cuts(10, 1) == [10]
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 28, 28)), rng.random((3, 28, 28))
    ag = agreement({"a": a, "a2": a * 2 + 1, "b": b})
    m = np.array(ag["matrix"])
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1) and m[0, 1] == pytest.approx(1) and abs(m[0, 2]) < 0.2


def test_run_explain_writes_maps_and_trust_scores(tmp_path):
    model, spec = _cnn()
    save_model(model, spec, tmp_path / "cnn.safetensors")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "audit.npz", images=(rng.random((4, 32, 32, 3)) * 255).astype(np.uint8),
             targets=np.array([0, 1, 2, 0]), preds=np.array([0, 2, 2, 1]), confidence=np.ones(4),
             p_true=np.ones(4), paths=np.array(["a", "b", "c", "d"]), class_names=np.array(["a", "b", "c"]))
    trust = {"steps": 4, "batch_size": 16, "sanity_images": 2, "sanity_stages": 2}
    job = {"model": tmp_path / "cnn.safetensors", "data": tmp_path / "audit.npz", "options": {}, "trust": trust,
           "seed": 0, "device": "cpu", "threads": 1}
    meta = run_stage("explain", "gradcam", job, tmp_path / "maps.npz")
    maps = load_maps(tmp_path / "maps.npz")
    assert meta["applicable"] and meta["layer"] == "features" and maps["maps_pred"].shape == (4, 32, 32)
    assert np.isnan(maps["maps_true"][[0, 2]]).all() and np.isfinite(maps["maps_true"][[1, 3]]).all()
    assert maps["faith_deletion"].shape == (4, 5) and 0 <= meta["faithfulness"]["deletion_auc"] <= 1
    assert len(meta["sanity"]["stages"]) == 2

    meta = run_stage("explain", "deeplift", job, tmp_path / "deeplift.npz")  # its completeness, per image, in its result
    err = load_maps(tmp_path / "deeplift.npz")["completeness_error"]
    assert meta["axiom"]["of"] == 4 and meta["axiom"]["within"] == int((err <= 0.05).sum()) and len(meta["sanity"]["stages"]) == 2

    mlp_spec = {**spec, "arch": "mlp", "arch_options": {"hidden": [8]}}
    save_model(build_model(mlp_spec), mlp_spec, tmp_path / "mlp.safetensors")
    meta = run_stage("explain", "gradcam", {**job, "model": tmp_path / "mlp.safetensors"}, tmp_path / "mlp_maps.npz")
    assert not meta["applicable"] and "no Conv2d" in meta["reason"]


def test_batching_does_not_change_the_maps():
    model, spec = _cnn()
    net = PixelSpace(model, spec["mean"], spec["std"]).eval()
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 1, 2, 0, 1])
    for name in ("saliency", "occlusion", "integrated_gradients"):
        small = attribute_batched(_method(name, batch_size=2), net, x, t)
        big = attribute_batched(_method(name, batch_size=256), net, x, t)
        assert np.allclose(small, big, atol=1e-5), name


def test_deeplift_keeps_completeness_on_a_relu_network_and_is_flagged_where_it_breaks_it():
    """DeepLIFT's promise: the map sums to F(x) - F(black). It holds through convolutions and ReLU; captum's
    max-pooling rule and ReLU6 (outside the rescale rule's list: the plain gradient passes) break it, and
    the records show the miss."""
    def net_with(act, pool):
        torch.manual_seed(0)
        layers = [nn.Conv2d(3, 8, 3, padding=1), act(), nn.Conv2d(8, 8, 3, padding=1), act(), *pool,
                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)]
        return PixelSpace(nn.Sequential(*layers), [0.5] * 3, [0.5] * 3).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 1, 2, 0])
    net = net_with(nn.ReLU, [])
    m = get_method("deeplift")
    a = m.attribute(net, x, t)
    with torch.no_grad():
        want = (net(x) - net(torch.zeros_like(x))).gather(1, t.view(-1, 1))[:, 0]
    assert torch.allclose(a.sum((1, 2)), want, rtol=1e-4, atol=1e-6)
    assert (m.records[-1]["completeness_error"] < 1e-4).all() and m.records[-1]["within"].all()
    for act, pool, scale in ((nn.ReLU, [nn.MaxPool2d(2)], 1), (nn.ReLU6, [], 8)):  # ReLU6 saturates on large inputs
        broken = get_method("deeplift")
        broken.attribute(net_with(act, pool), x * scale, t)
        assert not broken.records[-1]["within"].all(), act


def test_smoothgrad_family_follows_its_seed_and_image_not_its_batch():
    model, spec = _cnn()
    net = PixelSpace(model, spec["mean"], spec["std"]).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([0, 1, 2, 0])
    for name in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        whole = attribute_batched(get_method(name, seed=1, batch_size=64), net, x, t)
        split = attribute_batched(get_method(name, seed=1, batch_size=16), net, x, t)  # 16 samples: one image a call
        assert np.allclose(whole, split, atol=1e-6), name
        other = attribute_batched(get_method(name, seed=2), net, x, t)
        assert not np.allclose(whole, other), name
    plain = get_method("saliency").attribute(net, x, t)
    sg = torch.from_numpy(attribute_batched(get_method("smoothgrad", noise=1e-6), net, x, t))
    assert torch.allclose(sg, plain, rtol=1e-3, atol=1e-6)  # no noise: SmoothGrad is the gradient
