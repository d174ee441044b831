import numpy as np
import pytest

from cvaudit.data import ingest, read_manifest
from cvaudit.evaluate import choose_audit_set, classification_metrics, fit_baseline


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
