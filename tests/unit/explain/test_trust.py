"""Known answers for the trust checks' own arithmetic: which pixels come first, what a deleted or
inserted pixel becomes, how the cascade walks the layers and with which seeds, how rank correlation treats
constant maps, and that batching never changes a curve."""
import numpy as np
import pytest
import torch
from torch import nn

from cvaudit.explain import trust
from cvaudit.explain.trust import (
    _order,
    _small,
    agreement,
    cascading_randomisation,
    deletion_insertion,
    rank_corr,
    substrates,
)
from cvaudit.net.pixel_space import blur

from tiny_models import pixel_cnn


def _cnn(seed=0):
    return pixel_cnn(seed, channels=(4, 8), input_size=16)


def test_an_images_order_depends_on_its_index_not_on_its_batch():
    maps = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (3, 8, 8)).astype(np.float32))  # many ties
    whole = _order(maps, seed=2)
    assert torch.equal(_order(maps[1:2], seed=2, index=[1])[0], whole[1])
    assert not torch.equal(_order(maps[1:2], seed=2)[0], whole[1])  # as image 0 it would break ties otherwise
    assert (maps[0].flatten()[whole[0]].diff() <= 0).all()  # most salient first


class Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.sizes = net, []
        self.mean = net.mean

    def forward(self, x):
        self.sizes.append(len(x))
        return self.net(x)


def test_batching_never_changes_a_curve_and_every_call_is_full_up_to_the_batch_size():
    net = _cnn()
    x = torch.rand(25, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.randint(0, 3, (25,), generator=torch.Generator().manual_seed(2))
    maps = torch.rand(25, 16, 16, generator=torch.Generator().manual_seed(3))
    one = deletion_insertion(net, x, t, maps, steps=4, batch_size=1)
    counting = Counting(net)
    big = deletion_insertion(counting, x, t, maps, steps=4, batch_size=200)
    for k in ("deletion", "insertion", "deletion_auc", "insertion_auc"):
        assert np.allclose(one[k], big[k], atol=1e-6), k
    # 20 images of 2 x 5 curve points fill a call of 200; the last 5 images make one of 50
    assert counting.sizes == [200, 50]
    counting.sizes.clear()
    deletion_insertion(counting, x[:3], t[:3], maps[:3], steps=16)  # the defaults: 64 a call, one image (34) each
    assert counting.sizes == [34, 34, 34]


def test_the_defaults_are_16_steps_seed_0_and_risees_substrates_and_the_index_seeds_the_ties():
    net = _cnn()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2])
    maps = torch.from_numpy(np.random.default_rng(0).integers(0, 2, (3, 16, 16)).astype(np.float32))
    d = deletion_insertion(net, x, t, maps)
    e = deletion_insertion(net, x, t, maps, steps=16, batch_size=64, seed=0, substrate="rise")
    assert d["deletion"].shape == (3, 17) and all(np.array_equal(d[k], e[k]) for k in d)
    one = deletion_insertion(net, x[2:], t[2:], maps[2:], index=[2])
    assert np.array_equal(one["deletion"][0], d["deletion"][2])


def test_blacks_and_blurs_substrate_is_black_and_a_blur_of_sigma_width_over_16():
    x = torch.rand(2, 3, 16, 48, generator=torch.Generator().manual_seed(0))
    empty, blurred = substrates(nn.Identity(), x, "black_blur")
    assert torch.equal(empty, torch.zeros_like(x)) and torch.equal(blurred, blur(x, 3.0))  # 48 / 16
    small = torch.rand(1, 3, 8, 8)
    assert torch.equal(substrates(nn.Identity(), small, "black_blur")[1], blur(small, 1.0))  # at least sigma 1


def test_without_a_normalisation_rises_substrate_is_zero():
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    empty, blurred = substrates(nn.Identity(), x, "rise")
    assert torch.equal(empty, torch.zeros_like(x))
    assert torch.allclose(blurred[..., 10, 10], (x[..., 5:16, 5:16] * trust.rise_kernel()).sum((-1, -2)), atol=1e-6)


def test_small_pools_large_maps_to_28_by_28_and_keeps_small_ones():
    assert _small(np.ones((2, 56, 56))).shape == (2, 784)
    assert _small(np.ones((1, 56, 20))).shape == (1, 1120)  # only the width decides (maps are square in practice)
    assert _small(np.ones((1, 20, 20))).shape == (1, 400)
    assert np.array_equal(_small(np.array([[[np.nan, 1.0], [2.0, 3.0]]])), [[0.0, 1.0, 2.0, 3.0]])


def test_rank_correlation_of_constant_maps_is_zero_and_of_full_range_maps_is_theirs():
    rng = np.random.default_rng(0)
    a = rng.random((2, 10, 10))
    a[:, 0, 0], a[:, 0, 1] = 0.0, 1.0  # range exactly 1
    assert np.allclose(rank_corr(a, a), 1.0) and np.allclose(rank_corr(a, -a), -1.0)
    flat = np.zeros((2, 10, 10))
    assert np.array_equal(rank_corr(flat, a), [0.0, 0.0]) and np.array_equal(rank_corr(a, flat), [0.0, 0.0])
    assert np.array_equal(rank_corr(flat, flat), [0.0, 0.0])


def test_agreement_has_ones_on_the_diagonal_even_for_a_constant_map():
    rng = np.random.default_rng(1)
    ag = agreement({"a": rng.random((2, 8, 8)), "flat": np.zeros((2, 8, 8)), "b": rng.random((2, 8, 8))})
    assert ag["methods"] == ["a", "flat", "b"]
    m = np.array(ag["matrix"])
    assert np.array_equal(np.diag(m), [1, 1, 1]) and m[0, 1] == m[1, 0] == 0 and m[0, 2] == m[2, 0]


def test_the_cascade_randomises_each_layer_once_head_first_with_seed_plus_stage(monkeypatch):
    net = _cnn()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = net(x).argmax(1)
    from cvaudit.explain.methods import get_method
    method = get_method("saliency")
    maps = method.attribute(net, x, t).numpy()
    calls, seeds = [], []
    real_randomise, real_seed = trust._randomise, torch.manual_seed
    monkeypatch.setattr(trust, "_randomise", lambda m: calls.append(m) or real_randomise(m))
    monkeypatch.setattr(torch, "manual_seed", lambda s: seeds.append(s) or real_seed(s))
    res = cascading_randomisation(method, net, x, t, maps)  # defaults: 3 stages, seed 0
    layers = [m for _, m in trust.parameter_layers(trust.inner(net))][::-1]
    assert seeds == [0, 1, 2] and [repr(m) for m in calls] == [repr(m) for m in layers]  # (on a copy of the net)
    assert [s["randomised_layers"] for s in res["stages"]] == [1, 2, 5]  # round(2.5) is 2
    assert set(res["stages"][0]) == {"randomised_layers", "of", "down_to", "rank_corr", "per_image"}
    assert res["stages"][0]["of"] == 5 and len(res["stages"][0]["per_image"]) == 2
    assert res["final_rank_corr"] == res["stages"][-1]["rank_corr"] != res["stages"][0]["rank_corr"]
    assert res["stages"][0]["rank_corr"] < 0.99  # the head alone already changes a saliency map
    seeds.clear()
    cascading_randomisation(method, net, x, t, maps, stages=2, seed=5)
    assert seeds == [5, 6]


def test_randomise_resets_a_layer_or_draws_its_own_parameters_only():
    lin = nn.Linear(50, 50)
    before = lin.weight.clone()
    trust._randomise(lin)
    assert not torch.equal(lin.weight, before)
    assert float(lin.weight.abs().max()) <= 50 ** -0.5 and float(lin.weight.std()) > 0.06  # its own reset, not N(0, 0.02)

    class Gate(nn.Module):  # no reset_parameters: its own parameters are drawn from N(0, 0.02)
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4000))
            self.child = nn.Linear(3, 3)

    g = Gate()
    child = g.child.weight.clone()
    torch.manual_seed(0)
    trust._randomise(g)
    assert abs(float(g.w.mean())) < 0.002 and 0.018 < float(g.w.std()) < 0.022
    assert torch.equal(g.child.weight, child)  # its children are layers of their own


class _TwoQuadrants(nn.Module):
    """Class 0 reads only the top-left quadrant, class 1 only the bottom-right (sum of squares, so the
    gradient is 2x there and exactly 0 elsewhere)."""

    def forward(self, x):
        return torch.stack([(x[:, :, :8, :8] ** 2).sum((1, 2, 3)), (x[:, :, 8:, 8:] ** 2).sum((1, 2, 3))], 1)


class _Image:
    """A 'method' that ignores the model and the class: the image itself (channel mean)."""
    name, label, kind, batch_size = "image", "The image", "reference", 64

    def model_passes(self, h, w):
        return 0

    def attribute(self, net, x, target):
        return x.mean(1)


def test_random_logit_separates_a_class_map_from_one_that_ignores_the_class():
    from cvaudit.explain.methods import attribute_batched, get_method
    net = _TwoQuadrants()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3)) + 0.1
    t = torch.zeros(6, dtype=torch.long)
    sal = get_method("saliency")
    got = trust.random_logit(sal, net, x, t, attribute_batched(sal, net, x, t), n_classes=2, seed=0)
    assert got["classes"] == [1] * 6  # the only other class
    assert got["rank_corr"] < 0, got  # the other class's map is bright exactly where this one is dark
    img = _Image()
    same = trust.random_logit(img, net, x, t, attribute_batched(img, net, x, t), n_classes=2, seed=0)
    assert same["rank_corr"] > 0.99
    others = trust.other_classes(torch.tensor([0, 3, 9, 9]), 10, seed=1, index=[0, 1, 2, 2])
    assert (others != torch.tensor([0, 3, 9, 9])).all() and others[2] == others[3]  # seeded by the image's index


def test_max_sensitivity_measures_the_maps_relative_change_under_input_noise():
    """The image as its own map, on a uniform grey image: uniform noise of half-width r, averaged over 3
    channels, has a standard deviation of r/3 per pixel, so the map moves by about (r/3)/0.5 of its size."""
    from cvaudit.explain.methods import get_method
    x = torch.full((3, 3, 32, 32), 0.5)
    t = torch.zeros(3, dtype=torch.long)
    got = trust.max_sensitivity(_Image(), _TwoQuadrants(), x, t, radius=0.03, samples=4, seed=0)
    assert len(got["per_image"]) == 3 and 0.9 * 0.02 < got["median"] < 1.15 * 0.02, got
    again = trust.max_sensitivity(_Image(), _TwoQuadrants(), x, t, radius=0.03, samples=4, seed=0)
    assert again == got  # seeded
    sal = trust.max_sensitivity(get_method("saliency"), _TwoQuadrants(), x, t, radius=0.03, samples=4, seed=0)
    assert sal["median"] > got["median"]  # |gradient| = 2|x|: the max over channels moves more than their mean
    one = trust.max_sensitivity(get_method("lime", samples=20, segments=4), _cnn(), x[:1, :, :16, :16], t[:1], radius=0.03,
                                samples=2, seed=0)  # one image: captum leaves its target unexpanded
    assert len(one["per_image"]) == 1 and np.isfinite(one["median"])


class _Quadrant(nn.Module):
    """Two classes; class 0's logit is the brightness of the top-left quadrant."""

    def forward(self, x):
        q = x[:, :, :8, :8].mean((1, 2, 3)) * 20 - 10
        return torch.stack([q, -q], 1)


def test_road_ranks_the_map_of_the_pixels_that_matter_above_a_random_one_and_its_inverse_below():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 0.2  # a dark image...
    x[:, :, :8, :8] += 0.5  # ...with a bright quadrant: class 0, and filling the quadrant from its surroundings undoes it
    t = torch.zeros(4, dtype=torch.long)
    right = np.zeros((4, 16, 16), np.float32)
    right[:, :8, :8] = 1 + np.random.default_rng(0).random((4, 8, 8))  # the quadrant first, in some order
    rand = np.random.default_rng(1).random((4, 16, 16)).astype(np.float32)
    scores = {name: trust.road(_Quadrant(), x, t, m, [25, 50, 75], seed=0)
              for name, m in (("right", right), ("random", rand), ("inverse", -right))}
    assert (scores["right"] > scores["random"] + 0.05).all() and (scores["inverse"] < scores["random"] - 0.05).all(), scores
    one = trust.road(_Quadrant(), x[2:3], t[2:3], rand[2:3], [25, 50, 75], seed=0, index=[2])
    assert one[0] == scores["random"][2]  # an image's imputation noise is its own: no batch or shard changes it


def test_road_removes_each_percentile_of_a_map_full_of_ties_and_averages_its_imputations():
    """A map of 4 x 4 blocks (an upsampled Grad-CAM) ranks 16 values for 1,024 pixels: without a tie order the 30%
    threshold removes whole blocks, as many as the 70% one does. The seeded rank order removes 30% and 70% exactly."""
    from cvaudit.explain.trust import tie_broken_ranks
    blocky = np.kron(np.arange(16, dtype=np.float32).reshape(4, 4), np.ones((8, 8), np.float32))
    r = tie_broken_ranks(blocky, 0)
    for p in (30, 70):
        assert (r >= np.percentile(r, p)).mean() == pytest.approx(1 - p / 100, abs=1 / 1024)
    assert (blocky >= np.percentile(blocky, 30)).mean() != pytest.approx(0.7, abs=0.01)  # what ties do untreated
    assert np.all(np.diff(r.ravel()[np.argsort(blocky.ravel(), kind="stable")].reshape(16, -1).max(1)) > 0)  # order kept
    assert np.array_equal(r, tie_broken_ranks(blocky, 0)) and not np.array_equal(r, tie_broken_ranks(blocky, 1))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(2, dtype=torch.long)
    maps = np.stack([blocky, blocky])
    one = trust.road(_Quadrant(), x, t, maps, [30, 70], seed=0, imputations=1)
    three = trust.road(_Quadrant(), x, t, maps, [30, 70], seed=0, imputations=3)
    assert one.shape == three.shape == (2,) and np.isfinite(three).all() and not np.allclose(one, three)


def test_seed_stability_tells_a_method_whose_maps_are_its_draws_from_one_that_settles():
    """SmoothGrad with 2 noisy samples of a large noise: another seed gives another map (low rank correlation); with
    64 samples of a small noise the maps settle (high). A deterministic method is not checked."""
    from cvaudit.explain.explain import seed_stability
    from cvaudit.explain.methods import attribute_batched, get_method
    net = pixel_cnn(seed=0)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = net(x).argmax(1)
    idx = torch.arange(4)
    shaky = get_method("smoothgrad", samples=2, noise=0.5, seed=0)
    steady = get_method("smoothgrad", samples=64, noise=0.05, seed=0)
    low = seed_stability(shaky, net, x, t, attribute_batched(shaky, net, x, t, idx), idx)
    high = seed_stability(steady, net, x, t, attribute_batched(steady, net, x, t, idx), idx)
    assert low["median"] < 0.6 < high["median"] and low["seeds"] == [0, 7919], (low["median"], high["median"])
    assert len(high["per_image"]) == 4
    assert "seed" not in get_method("saliency").options
