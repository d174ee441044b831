"""Exports audited as a black box (arch onnx:FILE, torchscript:FILE): a small CNN trained here, exported with
torch.onnx and torch.jit, read back through a cvaudit model file. Its logits are the torch model's, image for image;
the gradient-free maps equal the torch model's; what needs gradients says so; bad exports get clear errors."""
import copy

import numpy as np
import pytest
import torch

from cvaudit import CvauditError
from cvaudit.explain.methods import NotApplicable, attribute_batched, get_method
from cvaudit.model.train_model import make_spec
from cvaudit.net.export import is_export
from cvaudit.net.models import SimpleCNN, build_model, load_model, save_model
from cvaudit.net.pixel_space import PixelSpace

pytest.importorskip("onnxruntime")
CLASSES = ["circle", "bar", "cross", "none"]
SIZE = 16
NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def shapes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] of four kinds, each with noise: a disc, a horizontal bar, a cross, nothing."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.3
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = ((yy - 8) ** 2 + (xx - 8) ** 2 < 16).float()
    bar = ((yy - 8).abs() < 2).float()
    cross = ((yy - 8).abs() < 2).float().maximum(((xx - 8).abs() < 2).float())
    for k, m in enumerate([disc, bar, cross]):
        x[y == k] += 0.6 * m
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    """A SimpleCNN trained on the shapes (it classifies held-out shapes well above chance) and its pixel-space net."""
    torch.manual_seed(0)
    model = SimpleCNN(4, channels=(8, 16), dropout=0.0)
    net = PixelSpace(model, NORM["mean"], NORM["std"])
    x, y = shapes(256)
    opt = torch.optim.Adam(model.parameters(), 0.01)
    for _ in range(10):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i:i + 32]), y[i:i + 32]).backward()
            opt.step()
    model.eval()
    xt, yt = shapes(64, seed=1)
    with torch.no_grad():
        assert (net(xt).argmax(1) == yt).float().mean() > 0.8
    return model, net


def export(model, path, kind: str, batch: int | None = None):
    example = torch.rand(batch or 2, 3, SIZE, SIZE)
    if kind == "onnx":
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes=None if batch else {"image": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    else:
        torch.jit.trace(model, example).save(str(path))
    return path


def cfg(path, kind: str, **kw):
    return {"arch": f"{kind}:{path}", "weights": "none", "input_size": SIZE, "train": False, "class_names": CLASSES,
            "normalisation": NORM, **kw}


def audited(tmp_path, model, kind: str, batch: int | None = None):
    """The export as the audit sees it: built from the config, saved as a cvaudit model file, the file deleted,
    loaded back (every later job has only the model file), in pixel space."""
    file = export(model, tmp_path / f"m.{'onnx' if kind == 'onnx' else 'pt'}", kind, batch)
    spec = make_spec(cfg(file, kind), CLASSES)
    built = build_model(spec)
    spec["mean"], spec["std"] = NORM["mean"], NORM["std"]
    save_model(built, spec, tmp_path / "model.safetensors")
    file.unlink()
    loaded, spec = load_model(tmp_path / "model.safetensors")
    return PixelSpace(loaded, spec["mean"], spec["std"]).eval(), spec


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_the_audited_export_gives_the_torch_models_logits_image_for_image(tmp_path, trained, kind):
    model, net = trained
    black, spec = audited(tmp_path, model, kind)
    x, _ = shapes(37, seed=2)  # not a multiple of any batch
    with torch.no_grad():
        want, got = net(x), black(x)
    assert is_export(black) and not got.requires_grad
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert (got - want).abs().max() < 1e-4
    assert spec["preprocessing"].endswith("(models.*.normalisation)")
    assert copy.deepcopy(black)(x[:3]).allclose(got[:3])  # a copy reopens its own runtime


def test_an_onnx_export_with_a_fixed_batch_size_takes_any_number_of_images(tmp_path, trained):
    model, net = trained
    black, _ = audited(tmp_path, model, "onnx", batch=4)
    x, _ = shapes(10, seed=3)
    with torch.no_grad():
        assert (black(x) - net(x)).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
@pytest.mark.parametrize("method", ["occlusion", "shapley_sampling", "lime", "random"])
def test_gradient_free_maps_of_the_export_equal_the_torch_models(tmp_path, trained, kind, method):
    model, net = trained
    black, _ = audited(tmp_path, model, kind)
    x, _ = shapes(6, seed=4)
    with torch.no_grad():
        target = net(x).argmax(1)
    options = {"shapley_sampling": {"samples": 4}, "lime": {"samples": 60}}.get(method, {})
    want = attribute_batched(get_method(method, batch_size=16, seed=0, **options), net, x, target)
    got = attribute_batched(get_method(method, batch_size=16, seed=0, **options), black, x, target)
    if method != "random":  # a map with something in it, not zeros equal to zeros
        assert np.abs(want).max() > 0
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("method", ["saliency", "gradcam", "lrp", "integrated_gradients"])
def test_methods_that_need_gradients_or_layers_say_the_export_has_none(tmp_path, trained, method):
    black, _ = audited(tmp_path, trained[0], "onnx")
    x, _ = shapes(2)
    with pytest.raises(NotApplicable, match="export without gradients"):
        attribute_batched(get_method(method, batch_size=8), black, x, torch.zeros(2, dtype=torch.long))


def test_square_fools_the_export_about_as_often_as_the_torch_model(tmp_path, trained):
    """Square's random search follows the model's margins, so outputs that differ in the 7th digit can take it down
    another path: the same share of images is fooled, not necessarily the same images."""
    from cvaudit.robust.adversarial import attack_batch
    model, net = trained
    black, _ = audited(tmp_path, model, "onnx")
    x, y = shapes(12, seed=5)
    options = {"autoattack": {"square_queries": 100}}
    eps = 0.5
    adv_t, _ = attack_batch("square", net, x, y, eps, options, seed=1)
    adv_b, _ = attack_batch("square", black, x, y, eps, options, seed=1)
    assert (adv_b - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        fooled_t, fooled_b = net(adv_t).argmax(1) != y, net(adv_b).argmax(1) != y
    assert 0 < fooled_b.sum() < len(y)
    assert abs(int(fooled_t.sum()) - int(fooled_b.sum())) <= 1


def test_bad_exports_get_errors_that_name_the_key_and_the_fix(tmp_path, trained):
    model = trained[0]
    onnx = export(model, tmp_path / "m.onnx", "onnx")
    with pytest.raises(CvauditError, match="input_size"):  # exported for 16 px, configured for 32
        build_model(make_spec(cfg(onnx, "onnx", input_size=32), CLASSES))
    with pytest.raises(CvauditError, match="4 outputs.*class_names"):
        build_model(make_spec(cfg(onnx, "onnx", class_names=CLASSES[:3]), CLASSES))
    with pytest.raises(CvauditError, match="train: false"):
        make_spec(cfg(onnx, "onnx", train={"epochs": 1}), CLASSES)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CvauditError, match="not an ONNX model"):
        build_model(make_spec(cfg(garbage, "onnx"), CLASSES))
    with pytest.raises(CvauditError, match="not a TorchScript archive"):
        build_model(make_spec(cfg(garbage, "torchscript"), CLASSES))
    with pytest.raises(CvauditError, match="not found"):
        build_model(make_spec(cfg(tmp_path / "missing.onnx", "onnx"), CLASSES))

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, a, b):
            return self.model(a + b)
    two = tmp_path / "two.onnx"
    torch.onnx.export(TwoInputs().eval(), (torch.rand(1, 3, SIZE, SIZE), torch.rand(1, 3, SIZE, SIZE)), str(two), dynamo=False)
    with pytest.raises(CvauditError, match="takes 2 inputs"):
        build_model(make_spec(cfg(two, "onnx"), CLASSES))


def test_a_model_file_written_as_onnx_is_audited_with_its_own_logits(tmp_path, trained):
    """The rule export_onnx: a cvaudit model file as an ONNX file, read back as arch onnx:FILE."""
    from cvaudit.model.export_onnx import write_onnx
    model, net = trained
    spec = {"arch": "simple_cnn", "arch_options": {"channels": [8, 16], "dropout": 0.0}, "weights": "none",
            "input_size": SIZE, "num_classes": 4, "class_names": CLASSES, "mean": NORM["mean"], "std": NORM["std"]}
    save_model(model, spec, tmp_path / "cnn.safetensors")
    info = write_onnx(tmp_path / "cnn.safetensors", tmp_path / "export" / "model.onnx")
    assert info["max_logit_difference"] < 1e-4 and info["class_names"] == CLASSES
    black = PixelSpace(build_model(make_spec(cfg(tmp_path / "export" / "model.onnx", "onnx"), CLASSES)),
                       NORM["mean"], NORM["std"])
    x, _ = shapes(9, seed=6)
    with torch.no_grad():
        assert (black(x) - net(x)).abs().max() < 1e-4
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["model.onnx"]  # no temporary file left
