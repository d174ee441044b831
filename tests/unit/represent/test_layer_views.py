"""What the layers keep: feature inversion loses more of the image the deeper the layer, and the
effective receptive field grows with depth and stays within the theoretical one."""
import numpy as np
import torch

from cvaudit.represent.inspect_units import activation_layers
from cvaudit.represent.layer_views import effective_receptive_field, effective_receptive_fields, invert, total_variation

from tiny_models import pixel_cnn


def _images(n=3):
    from PIL import Image

    from conftest import TINY
    paths = sorted(TINY.glob("*/fm*.png"))[:n]
    x = [np.asarray(Image.open(p).convert("RGB").resize((28, 28)), np.float32) / 255 for p in paths]
    return torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2)


def test_inversion_from_the_first_layer_is_closer_to_the_image_than_from_the_last():
    net = pixel_cnn(seed=0, channels=(8, 16, 32))
    layers = activation_layers(net.model)
    first, last = layers[0], layers[-1]
    x0 = _images()
    res = invert(net, x0, [first, last], {"steps": 150, "lr": 0.05, "tv": 0.05}, seed=0, device="cpu")
    d = res["distance"]  # (layers, images)
    assert res["images"].shape == (2, 3, 3, 28, 28)
    assert (d[0] < d[1]).all(), d
    assert d[0].mean() < 0.3 and d[1].mean() > 0.5
    assert (res["feature_loss"][0] < 0.05).all()  # the first layer's features are matched closely


def test_the_effective_receptive_field_grows_with_depth_within_the_theoretical_field():
    net = pixel_cnn(seed=0, channels=(8, 16, 32))
    layers = activation_layers(net.model)
    x = torch.rand(16, 3, 28, 28)
    erf = [effective_receptive_field(net, x, name, batch=8) for name in layers]
    assert erf[0]["theoretical"] == 3  # one 3 x 3 convolution
    assert [e["theoretical"] for e in erf] == sorted(e["theoretical"] for e in erf)
    assert erf[-1]["r90"] > erf[0]["r90"] and erf[-1]["r50"] >= erf[0]["r50"]
    together = effective_receptive_fields(net, x, layers, batch=8)  # one forward pass per batch for all layers
    assert all(np.allclose(together[n]["map"], e["map"]) and together[n]["r90"] == e["r90"] for n, e in zip(layers, erf))
    for e in erf:
        assert abs(float(e["map"].sum()) - 1) < 1e-5 and e["r50"] <= e["r90"] <= e["theoretical"] / 2 + 0.5
    mlp = pixel_cnn(seed=0)
    mlp.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 8), torch.nn.ReLU())
    assert effective_receptive_field(mlp, x, "2", batch=8) is None  # no spatial map: no centre unit


def test_total_variation_is_zero_on_a_flat_image_and_larger_on_noise():
    flat, noise = torch.full((1, 3, 16, 16), 0.5), torch.rand(1, 3, 16, 16)
    assert float(total_variation(flat)) < 1e-6 < float(total_variation(noise))
