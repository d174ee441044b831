import numpy as np
import pytest

from cvaudit.core.manifest import read_manifest
from cvaudit.data.fit_baseline import fit_baseline
from cvaudit.data.ingest_dataset import ingest
from cvaudit.model.evaluate_model import choose_audit_set, classification_metrics


def test_metrics_on_a_hand_computed_example():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    targets = np.array([0, 1, 1, 2, 0])
    m = classification_metrics(probs, targets, [0, 1, 2], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["top5_accuracy"] is None  # fewer than 5 outputs
    pc = {c["class"]: c for c in m["per_class"]}
    assert pc["a"]["precision"] == pytest.approx(1 / 2) and pc["a"]["recall"] == pytest.approx(1 / 2)
    assert pc["b"]["precision"] == pytest.approx(1 / 2) and pc["c"]["f1"] == pytest.approx(1.0)
    assert m["confusion"]["matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_predictions_outside_the_dataset_classes_get_an_other_column():
    probs = np.zeros((3, 8))
    probs[0, 2] = probs[1, 7] = probs[2, 5] = 1  # class 7 is not a dataset class
    probs[1, 5] = 0.5  # second choice: inside the top 5
    m = classification_metrics(probs, np.array([2, 5, 5]), [2, 5], [str(i) for i in range(8)])
    assert m["confusion"]["columns"] == ["2", "5", "other"]
    assert m["confusion"]["matrix"] == [[1, 0, 0], [0, 1, 1]]
    assert m["top5_accuracy"] == pytest.approx(1.0) and m["accuracy"] == pytest.approx(2 / 3)


def test_audit_set_mixes_mistakes_and_hits_per_class_and_is_seeded():
    targets = np.repeat([0, 1, 2], 10)
    correct = np.ones(30, bool)
    correct[[0, 1, 2, 10]] = False  # class 0 has 3 mistakes, class 1 has 1, class 2 none
    pick = choose_audit_set(targets, correct, per_class=4, max_images=100, seed=0)
    assert len(pick) == 12 and np.array_equal(pick, choose_audit_set(targets, correct, 4, 100, 0))
    for c, n_wrong in ((0, 2), (1, 1), (2, 0)):
        mine = pick[targets[pick] == c]
        assert len(mine) == 4 and (~correct[mine]).sum() == n_wrong
    capped = choose_audit_set(targets, correct, per_class=4, max_images=5, seed=0)
    assert len(capped) == 5 and set(np.bincount(targets[capped])) <= {1, 2}


def test_baseline_beats_chance_on_real_images(clean_folder, tmp_path):
    ingest({"source": "imagefolder", "path": str(clean_folder), "split": {"val": 0.2, "test": 0.3}}, "t", 0, tmp_path)
    res = fit_baseline(tmp_path / "manifest.csv", size=8, max_train=100, seed=0, out=tmp_path / "b.json")
    n_test = len(read_manifest(tmp_path / "manifest.csv", "test"))
    assert res["available"] and res["n_test"] == n_test >= 9 and res["accuracy"] >= 0.75  # trouser / sneaker / bag


def test_baseline_without_training_split_says_why(tmp_path):
    ingest({"source": "foolbox_imagenet", "split": {"val": 0.0, "test": 1.0}}, "im", 0, tmp_path)
    res = fit_baseline(tmp_path / "manifest.csv", size=8, max_train=100, seed=0, out=tmp_path / "b.json")
    assert not res["available"] and "no training split" in res["reason"]


# Known answers for evaluate's derived metrics.
def test_top5_counts_the_true_class_among_the_five_highest_only():
    probs = np.array([[0.30, 0.25, 0.2, 0.1, 0.08, 0.07],  # true 4: fifth highest -> in
                      [0.30, 0.25, 0.2, 0.1, 0.08, 0.07],  # true 5: sixth -> out
                      [0.07, 0.08, 0.1, 0.2, 0.25, 0.30]])  # true 5: first -> in
    m = classification_metrics(probs, np.array([4, 5, 5]), list(range(6)), list("abcdef"))
    assert m["top5_accuracy"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(1 / 3)
    five = classification_metrics(probs[:, 1:], np.array([3, 3, 4]), list(range(5)), list("abcde"))
    assert five["top5_accuracy"] == 1.0  # five outputs: top-5 is defined (and trivially 1)


def test_macro_f1_is_the_unweighted_mean_over_classes_with_support():
    targets = np.array([0, 0, 0, 0, 1, 2])
    preds = np.array([0, 0, 0, 0, 2, 2])  # f1: a 1, b 0 (never predicted), c 2/3
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class never predicted is precision 0, without a warning in the log
        m = classification_metrics(np.eye(3)[preds], targets, [0, 1, 2], ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert all(type(v) is int for row in m["confusion"]["matrix"] for v in row)  # counts, not 1.0 in metrics.json
    assert [c["support"] for c in m["per_class"]] == [4, 1, 1]
    assert m["per_class"][1] == {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["confusion"]["rows"] == m["confusion"]["columns"] == ["a", "b", "c"]


def test_the_dataset_classes_may_be_a_subset_of_the_models_outputs_in_any_order():
    names = ["x", "y", "z", "w"]
    targets = np.array([3, 3, 1])
    preds = np.array([3, 1, 1])
    m = classification_metrics(np.eye(4)[preds], targets, [3, 1], names)
    assert [c["class"] for c in m["per_class"]] == ["w", "y"] and m["confusion"]["matrix"] == [[1, 1], [0, 1]]
    assert [(c["precision"], c["recall"]) for c in m["per_class"]] == [(1.0, 0.5), (0.5, 1.0)]


def test_the_worst_mistakes_are_the_most_confident_wrong_predictions_first():
    from cvaudit.model.evaluate_model import worst_mistakes
    conf = np.array([0.99, 0.6, 0.9, 0.7, 0.95])
    correct = np.array([True, False, False, False, True])
    assert worst_mistakes(conf, correct, 2).tolist() == [2, 3]
    assert worst_mistakes(conf, correct, 10).tolist() == [2, 3, 1]
    assert worst_mistakes(conf, np.ones(5, bool), 3).tolist() == []
    ties = np.random.default_rng(0).choice([0.5, 0.7, 0.9], 2000)  # equal confidences: the first listed first
    picked = worst_mistakes(ties, np.zeros(2000, bool), 2000)
    assert picked.tolist() == sorted(range(2000), key=lambda i: (-ties[i], i))


@pytest.mark.parametrize("model_right, base_right", [(30, 20), (20, 30)])
def test_the_gain_over_the_baseline_is_the_model_minus_the_baseline_on_the_same_images(model_right, base_right):
    from cvaudit.core import stats
    from cvaudit.model.evaluate_model import baseline_gain
    rng = np.random.default_rng(0)
    correct, base_correct = rng.permutation(400) < 10 * model_right, rng.permutation(400) < 10 * base_right
    base = {"available": True, "accuracy": base_right / 40, "correct": base_correct.astype(int).tolist(), "name": "lr"}
    g = baseline_gain(correct, base, seed=3)
    want = (model_right - base_right) / 40
    assert g["gain_over_baseline_ci"] != stats.paired_difference(correct.astype(float), base_correct.astype(float), 0)
    assert g["gain_over_baseline"] == pytest.approx(want) and g["gain_over_baseline_ci"]["value"] == pytest.approx(want)
    assert g["gain_over_baseline_ci"] == stats.paired_difference(correct.astype(float), base_correct.astype(float), 3)
    assert g["mcnemar_p"] == pytest.approx(stats.mcnemar_p(correct, base_correct)) and g["mcnemar_p"] < 0.01
    assert g["baseline"] == {"available": True, "accuracy": base_right / 40, "name": "lr"}  # without per-image list


def test_without_per_image_baseline_results_the_gain_has_no_interval_and_without_a_baseline_none():
    from cvaudit.model.evaluate_model import baseline_gain
    correct = np.arange(40) < 30
    g = baseline_gain(correct, {"available": True, "accuracy": 0.5, "correct": [1] * 39}, seed=0)  # other images
    assert g["gain_over_baseline"] == pytest.approx(0.25) and g["gain_over_baseline_ci"] is None and g["mcnemar_p"] is None
    no_list = baseline_gain(correct, {"available": True, "accuracy": 0.5}, seed=0)  # an old baseline.json
    assert no_list["gain_over_baseline"] == pytest.approx(0.25) and no_list["gain_over_baseline_ci"] is None
    off = baseline_gain(correct, {"available": False, "reason": "no training split"}, seed=0)
    assert off == {"baseline": {"available": False, "reason": "no training split"}, "gain_over_baseline": None,
                   "gain_over_baseline_ci": None, "mcnemar_p": None}
    assert baseline_gain(correct, None, seed=0)["baseline"] is None


def test_the_audit_set_alternates_mistakes_and_hits_within_a_class_and_classes_take_turns():
    targets = np.repeat([0, 1], 6)
    correct = np.array([False, True] * 6)
    pick = choose_audit_set(targets, correct, per_class=4, max_images=8, seed=1)
    for c in (0, 1):
        mine = pick[targets[pick] == c]
        assert len(mine) == 4 and (~correct[mine]).sum() == 2
    one_each = choose_audit_set(targets, correct, per_class=4, max_images=2, seed=1)
    assert sorted(targets[one_each].tolist()) == [0, 1]  # every class one image before any gets two
    # with a cap of one image per class, the two classes start on opposite queues: one mistake, one hit
    first = choose_audit_set(targets, correct, per_class=1, max_images=2, seed=1)
    assert sorted(correct[first].tolist()) == [False, True]
    only_hits = choose_audit_set(targets, np.ones(12, bool), per_class=3, max_images=10, seed=0)
    assert len(only_hits) == 6 and choose_audit_set(targets, correct, 4, 8, seed=2).tolist() != pick.tolist()
    odd = choose_audit_set(targets, correct, per_class=3, max_images=10, seed=0)  # both queues full: 3, not 4
    assert np.bincount(targets[odd]).tolist() == [3, 3]
    # three classes, one image each: the first and third class in turn start with a mistake, the second with a hit
    t3, c3 = np.repeat([0, 1, 2], 4), np.array([False, True] * 6)
    assert sorted(c3[choose_audit_set(t3, c3, per_class=1, max_images=3, seed=s)].sum() for s in range(5)) == [1] * 5
    small = choose_audit_set(np.array([0, 1, 1, 1]), np.array([True, False, True, False]), 3, 10, seed=0)
    assert small.tolist() == [0, 1, 2, 3]  # a class with fewer images than per_class gives what it has
    none = choose_audit_set(targets, correct, per_class=2, max_images=0, seed=0)
    assert none.tolist() == [] and none.dtype.kind == "i"  # indices, even when there are none


def test_degenerate_reasons_and_numbers_are_exact():
    from cvaudit.core import stats
    from cvaudit.model.evaluate_model import COLLAPSE_SHARE, degenerate
    targets = np.repeat([0, 1, 2, 3], 25)
    preds = np.where(np.arange(100) < 80, 2, targets)  # 80% 'c': exactly the collapse share
    d = degenerate(preds, targets, [0, 1, 2, 3], list("abcd"), stats.proportion(40, 100))
    assert COLLAPSE_SHARE == 0.8 and d["collapsed"] and d["top_share"] == pytest.approx(0.8)
    assert d["true_share"] == pytest.approx(0.25) and d["chance"] == pytest.approx(0.25) and not d["at_chance"]
    assert d["predicted_classes"] == 2 and d["top_class"] == "c"
    assert d["why"] == "it predicts 'c' for 80% of the test images (true share 25%)"
    less = degenerate(np.where(np.arange(100) < 79, 2, targets), targets, [0, 1, 2, 3], list("abcd"),
                      stats.proportion(40, 100))
    assert not less["is"]
    # chance is the commonest class's share when that is above 1 / classes; an interval touching it is chance
    skewed = np.r_[np.zeros(70, int), np.ones(30, int)]
    ci = {"value": 0.75, "ci_low": 0.70, "ci_high": 0.8}
    d = degenerate(skewed, skewed, [0, 1], ["a", "b"], ci)
    assert d["chance"] == pytest.approx(0.7) and d["at_chance"] and not d["collapsed"]
    assert d["why"] == "its accuracy interval [0.700, 0.800] reaches the chance level 0.700"
    assert not degenerate(skewed, skewed, [0, 1], ["a", "b"], {**ci, "ci_low": 0.701})["is"]
    ci = stats.proportion(25, 100)
    both = degenerate(np.zeros(100, int), targets, [0, 1, 2, 3], list("abcd"), ci)
    assert both["why"] == ("it predicts 'a' for 100% of the test images (true share 25%); its accuracy interval "
                           f"[{ci['ci_low']:.3f}, {ci['ci_high']:.3f}] reaches the chance level 0.250")
    assert both["collapsed"] and both["at_chance"]
    common = np.where(np.arange(100) < 80, 0, targets)  # 80% of the images are 'a' and it predicts 'a' for all
    assert not degenerate(np.zeros(100, int), common, [0, 1, 2, 3], list("abcd"), stats.proportion(80, 100))["collapsed"]
    empty = degenerate(np.array([], int), np.array([], int), [0, 1], ["a", "b"], {"ci_low": None})
    assert not empty["is"] and empty["chance"] == 0.5 and empty["top_share"] == 0.0 and empty["true_share"] == 0.0
    assert degenerate(np.zeros(5, int), np.zeros(5, int), [0], ["a"], {"ci_low": None})["chance"] == 1.0
    assert degenerate(np.array([], int), np.array([], int), [0], ["a"], {"ci_low": None})["chance"] == 1.0
    none = degenerate(np.array([], int), np.array([], int), [], [], {"ci_low": None})
    assert none["top_class"] is None and none["top_share"] is None and none["true_share"] is None
    assert degenerate(skewed, skewed, [0, 1], ["a", "b"], {"ci_low": None})["at_chance"] is False
