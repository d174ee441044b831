import numpy as np
import torch
import torch.nn.functional as F

from cvaudit.explain import METHODS, get_method, load_maps, run_explain
from cvaudit.models import build_model, save_model


def _cnn(seed=0):
    torch.manual_seed(seed)
    spec = {"arch": "simple_cnn", "arch_options": {"channels": [8, 16]}, "weights": "none", "input_size": 32,
            "num_classes": 3, "class_names": ["a", "b", "c"], "keep_head": False, "mean": [0.5] * 3, "std": [0.5] * 3}
    return build_model(spec).eval(), spec


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_gradcam_equals_the_direct_computation():
    model, _ = _cnn()
    x = torch.randn(5, 3, 32, 32)
    target = torch.tensor([0, 1, 2, 0, 1])
    layer = model.get_submodule("features.5")
    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.update(a=o))
    out = model(x)
    h.remove()
    grads = torch.autograd.grad(out.gather(1, target[:, None]).sum(), acts["a"])[0]
    weights = grads.mean((2, 3), keepdim=True)
    cam = F.relu((weights * acts["a"]).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=(32, 32), mode="bilinear")[:, 0]
    got = get_method("gradcam").attribute(model, x, target)
    assert got.shape == (5, 32, 32)
    assert torch.allclose(got, expected.detach(), atol=1e-5) and expected.abs().sum() > 0
    assert _hooks(model) == 0


def test_every_registered_method_is_finite_deterministic_and_leaves_no_hooks():
    model, _ = _cnn()
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([0, 1, 2])
    for name in METHODS:
        a = get_method(name).attribute(model, x, t)
        b = get_method(name).attribute(model, x, t)
        assert a.shape == (3, 32, 32) and torch.isfinite(a).all() and torch.equal(a, b), name
        assert _hooks(model) == 0, name


def test_run_explain_explains_pred_and_true_class_and_skips_mlps(tmp_path):
    model, spec = _cnn()
    save_model(model, spec, tmp_path / "cnn.safetensors")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "audit.npz", images=(rng.random((4, 32, 32, 3)) * 255).astype(np.uint8),
             targets=np.array([0, 1, 2, 0]), preds=np.array([0, 2, 2, 1]), confidence=np.ones(4),
             p_true=np.ones(4), paths=np.array(["a", "b", "c", "d"]), class_names=np.array(["a", "b", "c"]))
    meta = run_explain("gradcam", tmp_path / "cnn.safetensors", tmp_path / "audit.npz", {"layer": "auto"}, 0, "cpu", 1,
                       tmp_path / "maps.npz")
    maps = load_maps(tmp_path / "maps.npz")
    assert meta["applicable"] and meta["layer"] == "features.5" and maps["maps_pred"].shape == (4, 32, 32)
    assert np.isnan(maps["maps_true"][[0, 2]]).all() and np.isfinite(maps["maps_true"][[1, 3]]).all()

    mlp_spec = {**spec, "arch": "mlp", "arch_options": {"hidden": [8]}}
    save_model(build_model(mlp_spec), mlp_spec, tmp_path / "mlp.safetensors")
    meta = run_explain("gradcam", tmp_path / "mlp.safetensors", tmp_path / "audit.npz", {}, 0, "cpu", 1,
                       tmp_path / "mlp_maps.npz")
    assert not meta["applicable"] and "no Conv2d" in meta["reason"]


def test_auto_layer_skips_conv_layers_too_small_to_localise():
    from cvaudit.models import build_model as bm
    lite = bm({"arch": "timm:tf_efficientnet_lite0", "weights": "none", "input_size": 64, "num_classes": 3}).eval()
    x = torch.randn(2, 3, 64, 64)
    assert get_method("gradcam", min_resolution=1).layer_name(lite, x) == "conv_head"  # 2x2 at 64 px
    chosen = get_method("gradcam").layer_name(lite, x)
    assert chosen == "blocks.3.0.conv_pw"  # the last conv still at 8x8 (before the stride-2 depthwise conv)
    big = torch.randn(1, 3, 224, 224)
    assert get_method("gradcam").layer_name(lite, big) == "conv_head"  # 7x7 at 224 px
    maps = get_method("gradcam").attribute(lite, x, torch.tensor([0, 1]))
    assert maps.shape == (2, 64, 64) and _hooks(lite) == 0
