"""Failure slices found in the model's embedding (cvaudit.robust.error_slices): on a small CNN trained on four
Fashion-MNIST classes, a sub-population planted in the test split that the model fails on is found and described, of
several kinds (one class's images turned 90 degrees, a minority in a white frame, at a third of their contrast, or
shrunk into a corner); the same test split without it flags no cluster, though one of its classes is harder than the
others."""
import numpy as np
import pytest
import torch

from cvaudit.robust.error_slices import cluster_embeddings, error_slices, excess_errors_p

from conftest import FMNIST, fit, fmnist_images

CLASSES = [0, 1, 7, 8]  # T-shirt, trouser, sneaker, bag
NAMES = ["T-shirt", "trouser", "sneaker", "bag"]
OPTIONS = {"error_clusters": 12, "min_size": 10, "alpha": 0.05}


def test_the_excess_is_measured_against_each_stratum_s_rate_outside():
    from scipy.stats import binom
    strata = np.repeat([0, 1], 50)
    wrong = np.zeros(100, bool)
    wrong[50:70] = True  # stratum 1 is hard: 20 of its 50 wrong
    inside = np.zeros(100, bool)
    inside[66:76] = True  # ten of stratum 1, four wrong: as wrong as the rest of it (16 of 40)
    p, expected = excess_errors_p(inside, wrong, strata)
    rate = 16.5 / 41
    assert expected == pytest.approx(10 * rate) and p == pytest.approx(binom.sf(3, 10, rate)) and p > 0.2
    inside = np.zeros(100, bool)
    inside[55:75] = True  # 15 of its 20 wrong, against 5 of 30 outside
    p, expected = excess_errors_p(inside, wrong, strata)
    assert expected == pytest.approx(20 * 5.5 / 31) and p == pytest.approx(binom.sf(14, 20, 5.5 / 31)) and p < 1e-4
    inside[:10] = True  # and ten of stratum 0, never wrong (a rate of 0.5 / 41 outside): the sum of two binomials
    p2, expected2 = excess_errors_p(inside, wrong, strata)
    assert expected2 == pytest.approx(expected + 10 * 0.5 / 41)
    tail = sum(binom.pmf(j, 10, 0.5 / 41) * binom.sf(14 - j, 20, 5.5 / 31) for j in range(11))
    assert p2 == pytest.approx(tail) and p2 > p


def _synthetic(planted: bool, seed: int = 0):
    """Four classes as blobs of an 8-d embedding, 120 images each, a tenth of each class wrong and embedded among
    the class it was given (as a model's own embedding places its mistakes); planted: 36 more images of class 0 in
    a blob of their own, two thirds of them wrong."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (5, 8))
    y = np.repeat(np.arange(4), 120)
    pred = y.copy()
    wrong = rng.random(len(y)) < 0.1
    pred[wrong] = (y[wrong] + rng.integers(1, 4, wrong.sum())) % 4
    emb = centres[pred] + rng.normal(0, 1, (len(y), 8))
    if planted:
        extra = np.zeros(36, int)
        extra_pred = np.where(np.arange(36) < 24, 2, 0)
        y, pred = np.r_[y, extra], np.r_[pred, extra_pred]
        emb = np.r_[emb, centres[4] + rng.normal(0, 1, (36, 8))]
    return emb, y, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_planted_blob_is_found_and_the_confusion_alone_is_not(seed):
    options = {"error_clusters": 10, "min_size": 10, "alpha": 0.05}
    names = ["a", "b", "c", "d"]
    emb, y, pred = _synthetic(False, seed)
    clean = error_slices(emb, y, pred, [f"i{i}" for i in range(len(y))], names, options, seed=0)
    assert clean["n_tested"] >= 4 and clean["flagged"] == 0, [(c["n"], c["errors"], c["p_adjusted"]) for c in clean["clusters"]]
    emb, y, pred = _synthetic(True, seed)
    found = error_slices(emb, y, pred, [f"i{i}" for i in range(len(y))], names, options, seed=0)
    top = found["clusters"][0]
    assert found["flagged"] == 1 and top["flagged"] and top["n"] >= 30
    assert sum(int(im["path"][1:]) >= 480 for im in top["images"]) == len(top["images"])  # the planted ones
    assert top["classes"][0] == {"value": "a", "n": top["classes"][0]["n"]} and top["mistakes"][0]["value"] == "a -> c"
    assert top["expected_accuracy"] > 0.8 and top["accuracy"]["ci_high"] < 0.6


@pytest.fixture(scope="module")
def model_and_images():
    x, y = fmnist_images(2800, seed=4)
    keep = np.isin(y, CLASSES)
    x, y = x[keep], np.searchsorted(CLASSES, y[keep])
    t = torch.tensor(x).permute(0, 3, 1, 2).float() / 255
    from cvaudit.net.models import build_model
    torch.manual_seed(0)
    spec = {"arch": "simple_cnn", "arch_options": {"channels": [8, 16]}, "weights": "none", "input_size": 28,
            "num_classes": 4}
    net = fit(build_model(spec), t[:300], torch.tensor(y[:300]), 80)
    return net, t[300:], y[300:]


def _embed(net, x):
    store = {}
    h = net.classifier[2].register_forward_pre_hook(lambda m, a: store.__setitem__("e", a[0].detach()))
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    h.remove()
    return store["e"].numpy(), pred


def _planted(x, y, kind, rng):
    x = x.clone()
    if kind == "trousers lying down":  # one class's images, a third of them, turned 90 degrees
        idx = rng.choice(np.nonzero(y == 1)[0], 50, replace=False)
        x[idx] = x[idx].transpose(-1, -2)
    elif kind == "a white frame":  # a minority of every class
        idx = rng.choice(len(y), 70, replace=False)
        for edge in (np.s_[:, :, :3, :], np.s_[:, :, -3:, :], np.s_[:, :, :, :3], np.s_[:, :, :, -3:]):
            sub = x[idx]
            sub[edge] = 1
            x[idx] = sub
    elif kind == "faint":  # a minority of every class at a third of their contrast
        idx = rng.choice(len(y), 70, replace=False)
        x[idx] = x[idx] * 0.3
    else:  # shrunk into a corner
        idx = rng.choice(len(y), 70, replace=False)
        small = torch.nn.functional.interpolate(x[idx], size=14, mode="bilinear", align_corners=False)
        x[idx] = 0
        x[idx, :, :14, :14] = small
    return x, idx


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")
@pytest.mark.parametrize("kind", ["trousers lying down", "a white frame", "faint", "shrunk into a corner"])
def test_a_planted_sub_population_the_model_fails_on_is_found(model_and_images, kind):
    net, x, y = model_and_images
    planted, idx = _planted(x, y, kind, np.random.default_rng(1))
    emb, pred = _embed(net, planted)
    paths = [f"img{i}.png" for i in range(len(y))]
    r = error_slices(emb, y, pred, paths, NAMES, OPTIONS, seed=0)
    flagged = [c for c in r["clusters"] if c["flagged"]]
    assert flagged, (kind, [(c["n"], c["errors"], round(c["p_adjusted"], 3)) for c in r["clusters"]])
    top = flagged[0]
    members = cluster_embeddings(emb, r["k"], 0) == top["cluster"]
    share, base = np.isin(np.nonzero(members)[0], idx).mean(), len(idx) / len(y)
    assert share >= 4 * base, (kind, share, base)  # the cluster is made of the planted images
    assert top["accuracy"]["ci_high"] < top["expected_accuracy"]
    assert top["mistakes"] and top["classes"]


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_nothing_is_flagged_without_a_planted_sub_population(model_and_images):
    net, x, y = model_and_images
    emb, pred = _embed(net, x)
    wrong = pred != y
    per_class = [wrong[y == c].mean() for c in range(4)]
    assert max(per_class) > 2 * np.mean(wrong)  # one class is much harder than the rest
    r = error_slices(emb, y, pred, [f"img{i}.png" for i in range(len(y))], NAMES, OPTIONS, seed=0)
    assert r["n_tested"] >= 8 and r["flagged"] == 0, [(c["n"], c["errors"], c["p_adjusted"]) for c in r["clusters"]]


def test_the_training_images_nearest_a_cluster_are_those_along_its_direction():
    from cvaudit.robust.error_slices import nearest_training
    emb = np.array([[2.0, 0.1], [2.1, -0.1], [0.0, 2.0], [0.1, 2.2], [-2.0, 0.0], [-2.1, 0.1]])
    members = np.array([True, True, False, False, False, False])
    train = np.array([[0.0, 5.0], [4.0, 0.0], [-3.0, 0.0], [1.5, 0.2], [0.1, 0.1]])
    # centred on the test mean (about [0, 0.7]): the cluster points along +x, down a little
    assert nearest_training(emb, members, train, k=2).tolist() == [3, 1]  # 3 lies along it, 1 near it
    assert nearest_training(emb, ~members & (emb[:, 0] < -1), train, k=1).tolist() == [2]
