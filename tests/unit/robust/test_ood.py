"""Out-of-distribution scores (cvaudit.robust.ood): AUROC against scikit-learn's, FPR at 95% TPR on a hand-worked
case, the three scores on known geometry, intervals that separate a separable pair of sets and not an inseparable
one, and a real model trained on Fashion-MNIST telling its own test images from inverted ones."""
import numpy as np
import pytest
import torch

from cvaudit.robust.ood import auroc, fpr_at_95, image_scores, separation

from conftest import FMNIST, fit, fmnist_images


def test_auroc_on_known_orderings_and_against_scikit_learn():
    from sklearn.metrics import roc_auc_score
    assert auroc([3, 4], [1, 2]) == 1 and auroc([1, 2], [3, 4]) == 0 and auroc([1, 1], [1, 1]) == 0.5
    assert auroc([2, 3], [1, 2]) == pytest.approx(0.875)  # one tie of four pairs counts half
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 1, 70).round(1), rng.normal(0, 1, 40).round(1)  # rounded: ties
    assert auroc(a, b) == pytest.approx(roc_auc_score(np.r_[np.ones(70), np.zeros(40)], np.r_[a, b]))
    stacked_a, stacked_b = rng.random((4, 30)), rng.random((4, 20))
    assert auroc(stacked_a, stacked_b) == pytest.approx([auroc(x, y) for x, y in zip(stacked_a, stacked_b)])


def test_fpr_at_95_keeps_95_percent_of_the_own_images():
    inside = np.arange(100.0)  # the threshold that keeps 95 of them is 5
    assert fpr_at_95(inside, np.array([4.0, 5, 6, 10])) == pytest.approx(0.75)
    assert fpr_at_95(inside, np.array([-1.0, 4.9])) == 0
    assert fpr_at_95(np.arange(20.0), np.array([0.5, 1.0, 2.0])) == pytest.approx(2 / 3)  # 19 of 20 kept: from 1
    assert fpr_at_95(np.tile(inside, (3, 1)), np.array([[4.0, 5], [5, 6], [0, 1]])).tolist() == [0.5, 1, 0]


def test_each_score_on_known_geometry():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    s = image_scores(logits, np.array([[1.0, 0.0], [-3.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 5.0]]), k=1)
    assert s["msp"] == pytest.approx([np.exp(2) / (np.exp(2) + 2), 1 / 3])
    assert s["energy"] == pytest.approx([np.log(np.exp(2) + 2), np.log(3)])
    assert s["knn"] == pytest.approx([0, -np.sqrt(2)])  # normalised: [1, 0] itself; [-1, 0] is sqrt 2 from [0, 1]
    s2 = image_scores(logits, np.array([[1.0, 0.0], [-3.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 5.0]]), k=5)
    assert s2["knn"] == pytest.approx([-np.sqrt(2), -2])  # k capped at the reference's 2: the farther one
    assert set(image_scores(logits, None, None, 3)) == {"msp", "energy"}
    assert set(image_scores(logits, np.ones((2, 2)), None, 3)) == {"msp", "energy"}  # nothing to search
    assert set(image_scores(logits, np.ones((2, 2)), np.zeros((0, 2)), 3)) == {"msp", "energy"}
    from cvaudit.robust.ood import normalised
    assert normalised(np.array([[1e-6, 0.0], [0.0, 0.0]])).tolist() == [[1, 0], [0, 0]]  # tiny kept, zero stays zero


def test_intervals_tell_a_separable_pair_from_an_inseparable_one():
    rng = np.random.default_rng(3)
    inside = {"msp": rng.normal(1, 1, 300), "energy": rng.normal(0, 1, 300)}
    outside = {"msp": rng.normal(0, 1, 300), "energy": rng.normal(0, 1, 300)}
    r = separation(inside, outside, seed=0)
    msp, energy = r["scores"]["msp"]["auroc"], r["scores"]["energy"]["auroc"]
    assert msp["ci_low"] > 0.6 and msp["ci_low"] < 0.76 < msp["ci_high"]  # Phi(1 / sqrt 2) = 0.76
    assert energy["ci_low"] < 0.5 < energy["ci_high"]
    assert r["best"] == "msp" and r["n_in"] == r["n_out"] == 300 and msp["n"] == 600
    fpr = r["scores"]["msp"]["fpr95"]
    assert fpr["ci_low"] < fpr["value"] < fpr["ci_high"] < 0.95 < r["scores"]["energy"]["fpr95"]["ci_high"]
    few = separation({"msp": np.arange(9.0)}, {"msp": np.arange(30.0)})["scores"]["msp"]["auroc"]
    assert few["ci_low"] is None and "9 images in the smaller set: too few" in few["note"]
    assert few["value"] == auroc(np.arange(9.0), np.arange(30.0)) and few["n"] == 39 and few["method"] == "bootstrap"
    enough = separation({"msp": np.arange(10.0)}, {"msp": np.arange(30.0)})["scores"]["msp"]["auroc"]
    assert enough["ci_low"] is not None  # ten in the smaller set: an interval
    # only the scores both sets have; none in common: no best
    partial = separation({"msp": inside["msp"], "knn": inside["msp"]}, {"msp": outside["msp"]})
    assert set(partial["scores"]) == {"msp"}
    assert separation({"knn": inside["msp"]}, {"msp": outside["msp"]})["best"] is None


def test_the_interval_is_the_percentile_bootstrap_of_both_sets_resampled_on_their_own():
    """Against a bootstrap written out here: each set resampled on its own, 2,000 times, percentile interval. The
    two draw differently, so they agree within the bootstrap's own noise; a paired resampling cannot even run on
    sets of 40 and 25 images."""
    from cvaudit.core import stats
    rng = np.random.default_rng(4)
    inside, outside = rng.normal(0.5, 1, 40), rng.normal(0, 1, 25)
    got = separation({"msp": inside}, {"msp": outside}, seed=7)["scores"]["msp"]
    draw = np.random.default_rng(123)
    i, o = draw.integers(0, 40, (stats.RESAMPLES, 40)), draw.integers(0, 25, (stats.RESAMPLES, 25))
    for name, fn in (("auroc", auroc), ("fpr95", fpr_at_95)):
        mine = np.quantile(fn(inside[i], outside[o]), [0.025, 0.975])
        assert got[name]["ci_low"] == pytest.approx(mine[0], abs=0.03), name
        assert got[name]["ci_high"] == pytest.approx(mine[1], abs=0.03), name
        assert got[name]["ci_low"] <= fn(inside, outside) <= got[name]["ci_high"]
        assert got[name]["ci_high"] - got[name]["ci_low"] > 0.1  # 65 images leave a wide interval
    assert got["auroc"]["value"] == auroc(inside, outside) and got["auroc"]["n"] == 65
    assert got["auroc"]["method"] == got["fpr95"]["method"] == "bootstrap"
    again = separation({"msp": inside}, {"msp": outside}, seed=7)["scores"]["msp"]
    assert again == got and separation({"msp": inside}, {"msp": outside})["scores"]["msp"] == \
        separation({"msp": inside}, {"msp": outside}, seed=0)["scores"]["msp"]
    assert separation({"msp": inside}, {"msp": outside}, seed=1)["scores"]["msp"]["auroc"]["ci_low"] != got["auroc"]["ci_low"]
    big = rng.normal(0.5, 1, 400), rng.normal(0, 1, 250)  # ten times the images: about a third of the width
    wide = separation({"msp": big[0]}, {"msp": big[1]})["scores"]["msp"]["auroc"]
    assert wide["ci_high"] - wide["ci_low"] < 0.45 * (got["auroc"]["ci_high"] - got["auroc"]["ci_low"])


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_a_model_trained_on_garments_tells_its_own_test_images_from_inverted_ones():
    from cvaudit.net.models import build_model
    x, y = fmnist_images(700, seed=2)
    keep = np.isin(y, [0, 1, 7, 8])
    x, y = torch.tensor(x[keep]).permute(0, 3, 1, 2).float() / 255, torch.tensor(np.searchsorted([0, 1, 7, 8], y[keep]))
    torch.manual_seed(0)
    spec = {"arch": "simple_cnn", "arch_options": {"channels": [8, 16]}, "weights": "none", "input_size": 28,
            "num_classes": 4}
    net = fit(build_model(spec), x[:200], y[:200], 60)
    feats = {}
    net.classifier[2].register_forward_pre_hook(lambda m, a: feats.__setitem__("e", a[0].detach().numpy()))
    with torch.no_grad():
        ref_logits = net(x[:200]).numpy()
        reference = feats["e"]
        own = image_scores(net(x[200:]).numpy(), feats["e"], reference, 10)
        inverted = image_scores(net(1 - x[200:]).numpy(), feats["e"], reference, 10)
    assert ref_logits.shape[1] == 4
    r = separation(own, inverted, seed=0)
    assert r["scores"]["knn"]["auroc"]["ci_low"] > 0.9  # the embedding puts inverted garments far from all
    assert r["best"] == "knn"
