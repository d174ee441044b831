"""Units: streamed statistics against a brute-force pass, receptive fields, gradient ascent."""
import numpy as np
import pytest
import torch

from cvaudit.net.models import build_model
from cvaudit.net.pixel_space import PixelSpace
from cvaudit.net.transforms import eval_transform
from cvaudit.represent.inspect_units import (
    TopK,
    activation_layers,
    first_layer_filters,
    receptive_boxes,
    resolve_layers,
    unit_statistics,
)
from cvaudit.represent.visualise_ascent import AscentObjective, channel_activation, gradient_ascent

from conftest import fit
from tiny_models import tiny_spec

SPEC = tiny_spec()
OPTS = {"layers": "auto", "stages": 3, "unit_layer": "auto"}


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return build_model(SPEC).eval()


@pytest.fixture
def rows(tiny_copy, tmp_path):
    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.ingest_dataset import ingest
    ingest({"source": "imagefolder", "path": str(tiny_copy), "split": {"val": 0.0, "test": 0.6}}, "t", 0, tmp_path)
    return read_manifest(tmp_path / "manifest.csv", "test")


def brute_force(model, rows, layer):
    from cvaudit.core.manifest import ImageDataset
    ds = ImageDataset(rows, SPEC["class_names"], eval_transform(SPEC))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    out = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: out.__setitem__("o", o))
    with torch.no_grad():
        model(x)
    h.remove()
    return x, out["o"]


def test_max_activating_images_are_the_arg_top_k_of_each_channel(cnn, rows):
    stages, unit, _ = resolve_layers(cnn, torch.zeros(1, 3, 28, 28), OPTS)
    assert stages == ["features.2", "features.7"] and unit == "features.7"
    st = unit_statistics(cnn, rows, SPEC, "cpu", stages, unit, top_k=3, batch_size=4)  # several batches merged
    _, o = brute_force(cnn, rows, unit)
    spatial = o.flatten(2).amax(2)  # (images, channels)
    order = np.argsort(-spatial.numpy(), axis=0, kind="stable")[:3]  # numpy's, not the code under test
    assert len(rows) > 8 and st["top_index"].shape == (3, 16)
    assert (st["top_index"] == order).all()
    assert np.allclose(st["top_values"], np.take_along_axis(spatial.numpy(), order, 0))
    # the stored position is where that channel peaks in that image
    for c in range(16):
        i, loc = st["top_index"][0, c], st["top_loc"][0, c]
        assert o[i, c].flatten()[loc] == spatial[i, c]


def test_sparsity_and_dead_channels_match_a_brute_force_pass(cnn, rows):
    cnn.features[1].bias.data[[0, 5]] = -1e4  # BatchNorm shift: channels 0 and 5 of the first ReLU never fire
    st = unit_statistics(cnn, rows, SPEC, "cpu", ["features.2", "features.7"], "features.7", top_k=2, batch_size=5)
    _, o = brute_force(cnn, rows, "features.2")
    first = st["layers"]["features.2"]
    assert first["dead"] == 2 and first["channels"] == 8
    assert (first["channel_max"][[0, 5]] <= 0).all() and (np.delete(first["channel_max"], [0, 5]) > 0).all()
    assert first["sparsity"] == pytest.approx(float((o <= 0).double().mean()), abs=1e-12)
    assert 0.25 < first["sparsity"] < 1


def test_top_k_keeps_the_earlier_image_on_ties():
    t = TopK(2)
    t.update(torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1, dtype=torch.long), first=0)
    t.update(torch.tensor([[3.0], [2.0]]), torch.zeros(2, 1, dtype=torch.long), first=2)
    assert t.index[:, 0].tolist() == [1, 2] and t.values[:, 0].tolist() == [3.0, 3.0]


def test_receptive_box_contains_the_unit_and_fits_its_theoretical_field(cnn, rows):
    x, o = brute_force(cnn, rows[:4], "features.7")  # conv3 - pool2 - conv3: receptive field 8 px, stride 2
    chans = torch.tensor([0, 3, 7, 15])
    locs = torch.tensor([0, 14 * 7 + 7, 14 * 13 + 13, 14 * 3 + 10])
    relu = cnn.features[2]
    boxes = receptive_boxes(cnn, x, "features.7", chans, locs)
    for (y0, y1, x0, x1), loc in zip(boxes, locs.tolist()):
        cy, cx = divmod(loc, 14)
        assert y0 <= 2 * cy + 1 < y1 and x0 <= 2 * cx + 1 < x1  # the unit's centre in input pixels
        assert 2 <= y1 - y0 <= 8 and 2 <= x1 - x0 <= 8
    assert relu.inplace is False and not any(m._backward_hooks or m._forward_hooks for m in cnn.modules())


@pytest.fixture
def trained(cnn, rows):
    """The CNN after a few hundred Adam steps on the fixture's real images (train accuracy 1.0)."""
    x, _ = brute_force(cnn, rows, "features.2")
    y = torch.tensor([SPEC["class_names"].index(r["label"]) for r in rows])
    fit(cnn, x, y, steps=150)
    assert (cnn(x).argmax(1) == y).float().mean() == 1.0
    return cnn


def test_gradient_ascent_raises_the_channel_activation_and_the_class_score(trained):
    cnn = trained
    net = PixelSpace(cnn, SPEC["mean"], SPEC["std"]).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    # The grey-plus-noise start images: one on which every unit feeding features.7 is off is flat there and
    # has no gradient at all; which ones are depends on the trained weights (and so on torch's thread count), so
    # the seed is the first whose class images (the last two) are both live and channel images at least two. The
    # ascent is judged on the live ones, and on the three channels nearest to firing
    seen = {}
    h = net.model.get_submodule("features.7").register_forward_pre_hook(lambda m, a: seen.__setitem__("pre", a[0]))
    for seed in range(50):
        x0 = (0.5 + 0.1 * torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
        with torch.no_grad():
            net(x0)
        alive = seen["pre"].flatten(2).std(2).amax(1) > 0  # a flat map: nothing upstream responds
        if alive[3:].all() and alive[:3].sum() >= 2:
            break
    h.remove()
    live = alive[:3]
    assert live.sum() >= 2
    chans, classes = seen["pre"][0].mean((1, 2)).argsort(descending=True)[:3].sort().values.tolist(), [0, 2]
    obj = AscentObjective(net, "features.7", chans, classes)
    res = gradient_ascent(net, obj, 5, 28, steps=80, lr=0.05, jitter=1, blur_every=4, blur_sigma=0.5, decay=1e-4,
                          seed=seed, device="cpu")
    obj.close()
    assert res["images"].shape == (5, 3, 28, 28) and 0 <= res["images"].min() and res["images"].max() <= 1
    assert torch.equal(res["initial"], x0)
    before = channel_activation(net, "features.7", res["initial"][:3], chans)[live]
    after = channel_activation(net, "features.7", res["images"][:3], chans)[live]
    assert (after > before).all() and (after - before).mean() > 0.2, (before, after)
    assert (res["end"][:3][live] > res["start"][:3][live] + 0.1).all()  # the objective (mean pre-activation) itself
    logits0, logits1 = net(res["initial"][3:]), net(res["images"][3:])
    for i, c in enumerate(classes):
        assert logits1[i, c] > logits0[i, c] + 0.5, (logits0, logits1)
        margin0, margin1 = logits0[i, c] - logits0[i].mean(), logits1[i, c] - logits1[i].mean()
        assert margin1 > margin0 + 0.3, (margin0, margin1)  # the class rose against the others, not every logit together
    assert not any(m._forward_pre_hooks for m in cnn.modules())


def test_first_layer_filters_for_conv_and_fully_connected_models(cnn):
    f, name = first_layer_filters(cnn, 28)
    assert name == "features.0" and f.shape == (8, 3, 3, 3) and f.min() >= 0 and f.max() <= 1
    w = cnn.features[0].weight[2].detach()  # tile 2 is its kernel, scaled around grey
    assert np.allclose(f[2] - 0.5, (w / (2 * w.abs().max())).permute(1, 2, 0).numpy(), atol=1e-6)
    mlp = build_model({**SPEC, "arch": "mlp", "arch_options": {"hidden": [20]}})
    f, name = first_layer_filters(mlp, 28)
    assert name == "features.1" and f.shape == (20, 28, 28, 3)
    assert activation_layers(mlp) == ["features.2"]


def test_hooks_are_removed_after_an_error_and_never_replace_an_output():
    from torch import nn

    from cvaudit.net.hooks import Hooks
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    x = torch.ones(1, 3)
    want = net(x)
    seen = []
    with pytest.raises(RuntimeError, match="inside the block"):
        with Hooks() as hooks:
            hooks.forward(net[0], lambda m, i, o: seen.append(o) or ())  # returns a falsy non-None value
            hooks.forward_pre(net[1], lambda m, a: "replaced?")
            hooks.backward(net[1], lambda m, gi, go: None)
            assert torch.equal(net(x), want)  # the hooks observed, the output is the model's own
            raise RuntimeError("inside the block")
    assert len(seen) == 1
    assert all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in net.modules())
