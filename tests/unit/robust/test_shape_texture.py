"""Shape or texture (Geirhos et al.): known answers on shapes that carry a class texture.

Class 0 is a disk filled with stripes, class 1 a square filled with a checkerboard. A bag of small
patches (3 x 3 receptive field, averaged over the image) can only read texture: its shape bias on
cue-conflict images must be near zero. A network trained on the same shapes filled with a random one of
the two textures can only read shape: its shape bias must be high. Patch shuffling at grid 1 changes
nothing; at grid 4 it keeps every pixel."""
import numpy as np
import pytest
import torch
from torch import nn

from cvaudit.robust.shape_texture import (
    cue_conflict,
    figure_mask,
    patch_shuffle,
    pick_partners,
    shape_texture,
    texture_fill,
)

from conftest import fit

OPTIONS = {"grids": [1, 2, 4, 8], "texture_grid": 4, "edge_sigma": 1.0, "smooth": 0.1}
SIDE = 32


def _texture(kind: int) -> np.ndarray:
    r, c = np.mgrid[:SIDE, :SIDE]
    return np.where((r // 2) % 2 == 0, 1.0, 0.45) if kind == 0 else np.where((r // 2 + c // 2) % 2 == 0, 1.0, 0.45)


def _images(n: int, seed: int, texture_follows_class: bool):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, SIDE, SIDE), np.float32)
    y = np.arange(n) % 2
    r, c = np.mgrid[:SIDE, :SIDE]
    for i in range(n):
        cy, cx = 16 + rng.integers(-3, 4, 2)
        shape = (r - cy) ** 2 + (c - cx) ** 2 <= 11 ** 2 if y[i] == 0 else (abs(r - cy) <= 9) & (abs(c - cx) <= 9)
        tex = _texture(y[i] if texture_follows_class else rng.integers(0, 2))
        x[i, :, shape] = tex[shape][:, None]
    return torch.from_numpy(x), torch.from_numpy(y)


def _bag_of_patches():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))


def _shape_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5, padding=2),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
                         nn.Flatten(), nn.Linear(32, 2))


@pytest.mark.slow
def test_a_bag_of_small_patches_decides_by_texture_and_a_shape_trained_net_by_shape():
    x, y = _images(48, 0, texture_follows_class=True)
    texture_net = fit(_bag_of_patches(), x, y, 60, lr=0.01)
    xs, ys = _images(96, 1, texture_follows_class=False)  # texture says nothing about the class
    shape_net = fit(_shape_net(), xs, ys, 80, lr=0.008)
    xt, yt = _images(80, 2, texture_follows_class=True)
    for net in (texture_net, shape_net):  # both are right on ordinary images
        assert (net(xt).argmax(1) == yt).float().mean() > 0.95
    tex, _ = shape_texture(texture_net, xt, yt, OPTIONS, seed=0, batch=64)
    shp, _ = shape_texture(shape_net, xt, yt, OPTIONS, seed=0, batch=64)
    tb, sb = tex["cue_conflict"]["shape_bias"], shp["cue_conflict"]["shape_bias"]
    assert tex["cue_conflict"]["with_figure"] == 80
    assert tb["n"] >= 60 and tb["value"] < 0.15, tex["cue_conflict"]
    assert sb["n"] >= 60 and sb["value"] > 0.85, shp["cue_conflict"]
    assert tb["ci_high"] < sb["ci_low"]
    # patch shuffling destroys shape, not texture: the texture model keeps its accuracy, the shape model loses it
    assert tex["shuffle"]["4"]["value"] > 0.9 and shp["shuffle"]["4"]["value"] < 0.75
    # silhouettes keep shape, not texture
    assert shp["removal"]["silhouette"]["value"] > tex["removal"]["silhouette"]["value"]


def test_patch_shuffling_at_grid_one_changes_nothing_and_otherwise_keeps_every_pixel():
    x = torch.rand(5, 3, 30, 30)
    assert torch.equal(patch_shuffle(x, 1, range(5)), x)
    s = patch_shuffle(x, 4, range(5))  # 30 = 4 x 7 + 2: the last two rows and columns stay
    assert torch.equal(s[..., 28:, :], x[..., 28:, :]) and torch.equal(s[..., :, 28:], x[..., :, 28:])
    assert torch.allclose(s.sort(-1).values.sum((-1, -2)), x.sort(-1).values.sum((-1, -2)))
    assert torch.equal(torch.sort(s[..., :28, :28].flatten(1)).values, torch.sort(x[..., :28, :28].flatten(1)).values)
    assert not torch.equal(s, x)
    assert torch.equal(patch_shuffle(x, 4, range(5)), s)  # seeded
    net = _bag_of_patches().eval()
    res, _ = shape_texture(net, x, torch.zeros(5, dtype=torch.long), {**OPTIONS, "grids": [1]}, seed=0, batch=8)
    assert res["shuffle"]["1"]["unchanged"] == 1.0 and res["shuffle"]["1"]["value"] == res["clean"]["value"]


def test_cue_conflict_images_take_the_shape_of_one_image_and_the_texture_of_the_other():
    x, y = _images(4, 3, texture_follows_class=True)
    partner = pick_partners(y.numpy(), 0)
    assert all(y[partner[i]] != y[i] for i in range(4))
    out, has_figure = cue_conflict(x, partner, 4, 1.0, [0, 1, 2, 3])
    assert has_figure.all()
    img = out.permute(0, 2, 3, 1).numpy()
    for i in range(4):
        mask = figure_mask(x[i].permute(1, 2, 0).numpy())
        assert np.array_equal(figure_mask(img[i]), mask)  # the same silhouette
        inside = img[i][mask][:, 0]
        assert np.isin(np.round(inside, 2), np.float32([0.45, 1.0])).all()  # the partner's texture, and the ink
    fill = texture_fill(x[0].permute(1, 2, 0).numpy(), 4, 0)
    assert (fill > 0.4).all()  # patches from inside the figure only: no background comes along
