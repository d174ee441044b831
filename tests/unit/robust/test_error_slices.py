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


def _three_blobs(errors_a: int, errors_c: int, seed: int = 0):
    """60 images in three well-separated blobs of a 2-d embedding, 20 each: A all class a, B all class b (each with
    errors_a mistakes at its even places), C ten of each class with errors_c mistakes at its even places (every
    mistake swaps a and b)."""
    rng = np.random.default_rng(seed)
    emb = np.repeat(np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]]), 20, 0) + rng.normal(0, 0.3, (60, 2))
    y = np.r_[np.zeros(20, int), np.ones(20, int), np.zeros(10, int), np.ones(10, int)]
    pred = y.copy()
    for start, e in ((0, errors_a), (20, errors_a), (40, errors_c)):
        idx = np.arange(start, start + 20, 2)[:e]
        pred[idx] = 1 - y[idx]
    return emb, y, pred


def test_a_cluster_is_described_by_its_numbers_classes_mistakes_groups_properties_and_images():
    """A known answer worked by hand: blob C errs on 10 of its 20 images, each class outside it errs at 0.5 / 21."""
    from scipy.stats import binom

    from cvaudit.core import stats
    emb, y, pred = _three_blobs(0, 10)
    paths = [f"i{i}" for i in range(60)]
    c_idx = np.arange(40, 60)
    site = np.array(["s0"] * 40 + ["s1"] * 8 + ["s2"] * 6 + ["s3"] * 4 + ["s4"] * 2)  # four sites in C
    level = np.arange(60) % 7 + np.where(np.arange(60) >= 40, 10.0, 0.0)  # C sits ten higher
    properties = {"level": level, "half": level / 2, "quarter": level / 4, "eighth": level / 8,
                  "flat": np.ones(60)}  # no spread: no robust shift to report
    train = (np.array([[-10.0, -10.0], [10.0, -3.0], [0.0, 10.0], [-8.0, -12.0], [5.0, 5.0]]), [f"t{j}" for j in range(5)])
    r = error_slices(emb, y, pred, paths, ["a", "b"], {"error_clusters": 5, "min_size": 20, "alpha": 0.05},
                     properties=properties, groups={"site": site}, train=train)
    assert {k: r[k] for k in ("n", "errors", "k", "min_size", "alpha", "flagged", "n_tested")} == \
        {"n": 60, "errors": 10, "k": 3, "min_size": 20, "alpha": 0.05, "flagged": 1, "n_tested": 3}
    top, *rest = r["clusters"]
    p = binom.sf(9, 20, 0.5 / 21)  # both by true class and by prediction: 20 images at 0.5 / 21 each
    mad = 1.4826 * np.median(np.abs(level - np.median(level)))
    shift = (np.median(level[c_idx]) - np.median(level)) / mad
    assert top == {
        "cluster": top["cluster"], "n": 20, "errors": 10, "accuracy": stats.proportion(10, 20),
        "expected_accuracy": pytest.approx(1 - 1 / 42), "p": pytest.approx(p), "p_adjusted": pytest.approx(3 * p),
        "flagged": True,
        "images": [{"path": f"i{i}", "true": "a" if i < 50 else "b", "pred": "b" if i < 50 else "a"}
                   for i in (40, 42, 44, 46, 48, 50, 52, 54)],  # the mistakes first, in order; eight shown
        "nearest_training": ["t0", "t3", "t1", "t2"],  # by cosine from the test mean, about (0, 0)
        "classes": [{"value": "a", "n": 10}, {"value": "b", "n": 10}],
        "mistakes": [{"value": "a -> b", "n": 5}, {"value": "b -> a", "n": 5}],
        "properties": [{"property": "level", "shift": pytest.approx(shift)},
                       {"property": "half", "shift": pytest.approx(shift)},
                       {"property": "quarter", "shift": pytest.approx(shift)}],
        "groups": {"site": [{"value": "s1", "n": 8}, {"value": "s2", "n": 6}, {"value": "s3", "n": 4}]}}
    assert shift > 1
    from cvaudit.robust.error_slices import describe
    alone = describe(np.arange(60) >= 40, pred != y, y, pred, ["a", "b"], {"flat": np.ones(60)}, None)
    assert alone["properties"] == [] and alone["groups"] == {}  # a property with no spread shifts nothing
    assert [(c["n"], c["errors"], c["p"], c["p_adjusted"], c["flagged"]) for c in rest] == [(20, 0, 1.0, 1.0, False)] * 2
    assert r == error_slices(emb, y.astype(float), pred.astype(float), paths, ["a", "b"],  # labels read as numbers
                             {"error_clusters": 5, "min_size": 20, "alpha": 0.05}, 0, properties, {"site": site}, train)


def test_the_level_alpha_and_holms_correction_decide_a_borderline_cluster():
    emb, y, pred = _three_blobs(2, 6)  # C: 6 of 20 wrong where A and B err on 2 of 20 each
    opts = {"error_clusters": 5, "min_size": 20}
    loose = error_slices(emb, y, pred, [f"i{i}" for i in range(60)], ["a", "b"], {**opts, "alpha": 0.2})
    strict = error_slices(emb, y, pred, [f"i{i}" for i in range(60)], ["a", "b"], {**opts, "alpha": 0.05})
    ps = sorted(c["p"] for c in loose["clusters"])
    holm = np.maximum.accumulate([min(1.0, (3 - i) * q) for i, q in enumerate(ps)])
    assert [c["p_adjusted"] for c in sorted(loose["clusters"], key=lambda c: c["p"])] == pytest.approx(holm)
    assert 0.05 < loose["clusters"][0]["p_adjusted"] < 0.2
    assert (loose["flagged"], strict["flagged"]) == (1, 0)


def test_too_few_images_or_no_mistake_is_said_and_two_clusters_are_enough():
    emb, y, pred = _three_blobs(0, 10)
    paths = [f"i{i}" for i in range(60)]
    few = error_slices(emb, y, pred, paths, ["a", "b"], {"error_clusters": 5, "min_size": 31, "alpha": 0.05})
    assert few == {"n": 60, "errors": 10, "k": 1, "min_size": 31, "alpha": 0.05, "clusters": [], "flagged": 0,
                   "note": "60 test images hold fewer than two clusters of 31 (robustness.slices.min_size)"}
    right = error_slices(emb, y, y, paths, ["a", "b"], {"error_clusters": 5, "min_size": 20, "alpha": 0.05})
    assert right["note"] == "the model makes no mistake on the test split" and right["clusters"] == [] and right["k"] == 3
    assert error_slices(emb, y, y, paths, ["a", "b"], {"error_clusters": 5, "min_size": 30, "alpha": 0.05})["note"] == \
        "the model makes no mistake on the test split"  # with two clusters too
    two = error_slices(emb, y, pred, paths, ["a", "b"], {"error_clusters": 5, "min_size": 30, "alpha": 0.05})
    assert two["k"] == 2 and [c["n"] for c in two["clusters"]] == [40] and "note" not in two  # two blobs in one
    many = error_slices(emb, y, pred, paths, ["a", "b"], {"error_clusters": 50, "min_size": 7, "alpha": 0.05})
    assert many["k"] == 8 and isinstance(many["k"], int)  # 60 // 7 clusters, where 50 were asked for
    sizes = np.bincount(cluster_embeddings(emb, 8, 0), minlength=8)
    assert (sizes[np.argmax(sizes < 7):] >= 7).any()  # a cluster too small comes before one tested
    assert sorted(c["n"] for c in many["clusters"]) == sorted(sizes[sizes >= 7].tolist())


def test_the_clusters_are_kmeans_on_the_centred_normalised_principal_components_with_the_seed():
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    rng = np.random.default_rng(3)
    for n, d, k in ((200, 64, 5), (20, 64, 4), (40, 8, 4)):
        emb = (rng.normal(0, 1, (n, d)) + 5.0).astype(np.float32)  # far from the origin: only centring shows the spread
        x = emb.astype(np.float64) - emb.astype(np.float64).mean(0)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        dims = min(32, d, n - 1)
        if dims < d:
            x = PCA(n_components=dims, random_state=7).fit_transform(x)
        reference = KMeans(n_clusters=k, n_init=4, random_state=7).fit_predict(x)
        assert np.array_equal(cluster_embeddings(emb, k, 7), reference), (n, d)
    emb = rng.normal(0, 1, (120, 16))
    y = rng.integers(0, 3, 120)
    pred = np.where(rng.random(120) < 0.3, (y + 1) % 3, y)
    paths = [f"i{i}" for i in range(120)]
    opts = {"error_clusters": 4, "min_size": 10, "alpha": 0.05}
    labels = cluster_embeddings(emb, 4, 5)
    r = error_slices(emb, y, pred, paths, ["a", "b", "c"], opts, seed=5)
    for c in r["clusters"]:
        assert {im["path"] for im in c["images"]} <= {paths[i] for i in np.nonzero(labels == c["cluster"])[0]}
        assert c["n"] == (labels == c["cluster"]).sum()
    assert error_slices(emb, y, pred, paths, ["a", "b", "c"], opts) == error_slices(emb, y, pred, paths, ["a", "b", "c"],
                                                                                      opts, seed=0)


def test_a_p_value_never_exceeds_one_and_vectors_are_scaled_to_unit_length():
    from cvaudit.robust.error_slices import normalised
    strata = np.zeros(50, int)
    inside = np.zeros(50, bool)
    inside[0] = True  # one image, no error anywhere: the rate outside is 0.5 / 50, whose pmf sums past 1.0 in floats
    assert excess_errors_p(inside, np.zeros(50, bool), strata) == (1.0, pytest.approx(0.01))
    assert normalised(np.array([[0.3, 0.4], [0.0, 0.0], [3.0, 4.0]])).tolist() == [[0.6, 0.8], [0.0, 0.0], [0.6, 0.8]]


def test_the_training_images_nearest_a_cluster_are_measured_from_the_test_splits_mean():
    from cvaudit.robust.error_slices import nearest_training
    emb = np.array([[100.0, 1.0], [100.0, 1.2], [100.0, -1.0], [100.0, -1.2]])  # the mean is (100, 0)
    members = np.array([True, True, False, False])  # the cluster lies above the mean
    train = np.array([[100.0, 3.0], [150.0, 0.0], [100.0, -3.0]])
    assert nearest_training(emb, members, train, k=3).tolist() == [0, 1, 2]
