"""Every attribution method passes one suite; known answers; the trust checks behave as the papers say."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvaudit import CvauditError
from cvaudit.core.files import load_npz as load_maps
from cvaudit.core.shards import run_stage
from cvaudit.explain.methods import METHODS, AttributionMethod, GradCAM, NotApplicable, attribute_batched, get_method
from cvaudit.explain.trust import agreement, cascade_cuts, cascading_randomisation, deletion_insertion, rank_corr
from cvaudit.net.models import build_model, save_model
from cvaudit.net.pixel_space import PixelSpace

from tiny_models import pixel_vit, tiny_cnn

SMALL = {"integrated_gradients": {"steps": 8}, "lime": {"samples": 60, "segments": 16}, "shap": {"evals": 60},
         "kernel_shap": {"samples": 200, "segments": 16}, "shapley_sampling": {"samples": 2, "segments": 16},
         "deeplift_shap": {"background": 4}}


def _cnn(seed=0, **kw):
    return tiny_cnn(seed, **{"input_size": 32, "class_names": ["a", "b", "c"], "keep_head": False, **kw})


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _method(name, **kw):
    return get_method(name, **{**SMALL.get(name, {}), **kw})


TRANSFORMER_ONLY = {"attention_rollout", "transformer_attribution"}  # tests/unit/net/test_vit.py: their known answers


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m == "shap" else m for m in sorted(METHODS)])
def test_every_method_shape_finite_deterministic_no_hooks(name):
    model, spec = _cnn()
    net = pixel_vit(class_names=["a", "b", "c"]) if name in TRANSFORMER_ONLY else PixelSpace(model, spec["mean"], spec["std"]).eval()
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


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m == "shap" else m  # shap: 3 s to import
                                  for m in sorted(set(METHODS) - {"random"} - TRANSFORMER_ONLY)])
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
    from torchvision.transforms import v2 as T

    from cvaudit.core.images import load_rgb
    from cvaudit.data.sources import foolbox_dir
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
    meta = run_stage("explain", "deeplift_shap", {**job, "options": {"background": 3}}, tmp_path / "dls.npz")
    assert meta["axiom"]["of"] == 4 and "background's mean" in meta["axiom"]["promise"] and meta["axiom"]["caveat"]

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
    assert (m.records[-1]["completeness_error"] < 1e-4).all()
    for act, pool, scale in ((nn.ReLU, [nn.MaxPool2d(2)], 1), (nn.ReLU6, [], 8)):  # ReLU6 saturates on large inputs
        broken = get_method("deeplift")
        broken.attribute(net_with(act, pool), x * scale, t)
        assert (broken.records[-1]["completeness_error"] > 0.05).any(), act


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


def _relu_net(bias=True):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.ReLU(),
              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3, bias=bias)]
    return PixelSpace(nn.Sequential(*layers), [0.5] * 3, [0.5] * 3).eval()


@pytest.mark.parametrize("name", ["deeplift", "deeplift_shap", pytest.param("shap", marks=pytest.mark.slow), "kernel_shap",
                                  "shapley_sampling", "lrp"])
def test_the_additive_methods_keep_their_own_axiom_on_a_small_relu_network(name):
    """Completeness / efficiency / conservation, each computed here from the model, not from the method's own
    record: DeepLIFT's map sums to F(x) - F(black), Deep SHAP's to F(x) minus the background's mean, the SHAP
    family's to p(x) - p(baseline), bias-free LRP's to the logit. The record agrees, within tolerance."""
    net = _relu_net(bias=name != "lrp")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 1, 2, 0])
    m = _method(name)
    a = m.attribute(net, x, t).double()
    with torch.no_grad():
        logit = net(x).gather(1, t.view(-1, 1))[:, 0].double()
        prob = torch.softmax(net(x), 1).gather(1, t.view(-1, 1))[:, 0].double()
        if name == "deeplift":
            want = logit - net(torch.zeros_like(x))[:, t].diagonal().double()
        elif name == "deeplift_shap":
            want = logit - net(m._baselines(x))[:, t].mean(0).double()
        elif name == "lrp":
            want = logit
        elif name == "shap":
            want = None  # its baseline (the blurred image) is shap's masker's: the record is the check
        else:  # superpixel values: one per region, repeated over its pixels (below)
            want = None
    if name in ("kernel_shap", "shapley_sampling"):  # rebuild the superpixels and the mean-colour baseline here
        from cvaudit.explain.methods import superpixels
        for k in range(len(x)):
            img = x[k].permute(1, 2, 0).double().numpy()
            seg = torch.from_numpy(superpixels(img, m.options["segments"]))
            fill = x[k].clone()
            for s in seg.unique():
                fill[:, seg == s] = x[k][:, seg == s].mean(1, keepdim=True)
            with torch.no_grad():
                p_fill = torch.softmax(net(fill[None]), 1)[0, t[k]].double()
            total = sum(a[k][seg == s][0] for s in seg.unique())
            assert abs(float(total - (prob[k] - p_fill))) < 1e-4 * max(abs(float(prob[k] - p_fill)), 1e-3)
    elif want is not None:
        assert torch.allclose(a.sum((1, 2)), want, rtol=1e-3, atol=1e-5), (a.sum((1, 2)), want)
    assert (m.records[-1]["completeness_error"] < m.options["tolerance"]).all(), m.records[-1]["completeness_error"]


def test_lrp_equals_the_rules_computed_by_hand_and_is_flagged_where_biases_absorb_relevance():
    """zennit's epsilon-z+-flat composite against the rules written out with autograd: flat on the first conv,
    z+ on the second, the pooling's share by activation, epsilon on the dense layer. Then the same network
    with biases: relevance is lost, and the record shows it."""
    import torch.nn.functional as F
    net = _relu_net(bias=False)
    seq = net.model
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([1, 2])
    got = get_method("lrp").attribute(net, x, t)

    def share(fn, inp, rel, eps=1e-6):  # inp * d/dinp [fn(inp) . (rel / fn(inp))]: the z-rule family
        inp = inp.detach().requires_grad_(True)
        z = fn(inp)
        (g,) = torch.autograd.grad((z * (rel / (z + eps * z.sign())).detach()).sum(), inp)
        return inp.detach() * g

    x0 = (x - net.mean) / net.std
    a1 = F.relu(seq[0](x0))
    a2 = F.relu(seq[2](a1))
    pooled = seq[4](a2).flatten(1)
    out = seq[6](pooled)
    r_out = F.one_hot(t, 3).double() * out.double()
    r_pooled = share(lambda v: F.linear(v, seq[6].weight.double()), pooled.double(), r_out)
    r_a2 = share(lambda v: F.adaptive_avg_pool2d(v, 1).flatten(1), a2.double(), r_pooled)
    r_a1 = share(lambda v: F.conv2d(v, seq[2].weight.double().clamp(min=0), padding=1), a1.double(), r_a2)
    ones = torch.ones_like(x0, dtype=torch.float64)
    r_x = share(lambda v: F.conv2d(v, torch.ones_like(seq[0].weight, dtype=torch.float64), padding=1), ones, r_a1)
    assert torch.allclose(got.double(), r_x.sum(1), rtol=1e-3, atol=1e-6)
    biased = get_method("lrp")
    biased.attribute(_relu_net(bias=True), x, t)
    assert (biased.records[-1]["completeness_error"] > 0.05).any()


def test_lrp_refuses_a_transformer():
    """zennit has no rules for attention or layer norm: on a ViT its maps miss the logit by orders of magnitude,
    so the method says it does not apply rather than draw them."""
    from cvaudit.net.models import build_model
    spec = {"arch": "timm:vit_tiny_patch16_224", "arch_options": {"img_size": 16, "patch_size": 4, "depth": 1},
            "weights": "none", "input_size": 16, "num_classes": 3}
    net = PixelSpace(build_model(spec), [0.5] * 3, [0.5] * 3).eval()
    with pytest.raises(NotApplicable, match="no LRP rules for attention"):
        get_method("lrp").attribute(net, torch.rand(1, 3, 16, 16), torch.tensor([0]))


def test_integrated_gradients_on_a_randomised_model_stops_at_the_trained_maps_step_count():
    """The parameter-randomisation check compares maps at the steps the trained maps needed; without the cap a
    map that never meets completeness doubles its steps up to max_steps."""
    net, spec = tiny_cnn(3)
    x, t = torch.rand(2, 3, spec["input_size"], spec["input_size"]), torch.tensor([0, 1])
    ig = get_method("integrated_gradients", steps=4, max_steps=64, tolerance=-1.0)  # never converges: 4 ... 64
    ig.attribute(net, x, t)
    assert ig.records[-1]["steps"].tolist() == [64, 64]
    with ig.at_most(8):
        ig.attribute(net, x, t)
    assert ig.records[-1]["steps"].tolist() == [8, 8] and ig.options["max_steps"] == 64
