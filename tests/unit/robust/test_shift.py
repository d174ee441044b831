"""Shifted test sets: the shift stage's accuracy, ECE and gap on real image files, classes matched by name
(a class the model lacks is a config error naming the key), and images the model trained on left out."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from cvaudit import CvauditError
from cvaudit.net.models import save_model
from cvaudit.robust.shift import run_shift, shift_rows

from conftest import TINY
from tiny_models import tiny_cnn

FIELDS = ["path", "label", "split", "sha256", "original"]


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def _rows(split, inverted_dir=None):
    rows = []
    for label in ("bag", "sneaker", "trouser"):
        for i, p in enumerate(sorted((TINY / label).glob("fm*.png"))):
            path = p
            if inverted_dir is not None:  # a re-rendering: new file, same source entry
                path = inverted_dir / f"{label}_{p.name}"
                Image.fromarray(255 - np.asarray(Image.open(p).convert("RGB"))).save(path)
            rows.append({"path": str(path), "label": label, "split": split(i), "sha256": f"{label}{i}{inverted_dir is not None}",
                         "original": f"{label}/{p.name}"})
    return rows


def test_the_shift_stage_scores_a_shifted_rendering_and_leaves_out_what_the_model_trained_on(tmp_path):
    model, spec = tiny_cnn(seed=0)
    save_model(model, spec, tmp_path / "m.safetensors")
    own = _rows(lambda i: "train" if i == 0 else "test")
    _write(tmp_path / "own.csv", own)
    test = [r for r in own if r["split"] == "test"]
    from cvaudit.net.pixel_space import predict_proba
    probs = predict_proba(model, test, spec, "cpu")
    targets = np.array([spec["class_names"].index(r["label"]) for r in test])
    np.savez(tmp_path / "probs.npz", probs=probs, targets=targets, paths=np.array([r["path"] for r in test]))
    (tmp_path / "inv").mkdir()
    shifted = _rows(lambda i: "test", tmp_path / "inv")
    _write(tmp_path / "shift.csv", shifted)
    res = run_shift(tmp_path / "m.safetensors", "m", tmp_path / "own.csv", tmp_path / "probs.npz",
                    {"inverted": tmp_path / "shift.csv"}, {"max_images": 100}, seed=0, device="cpu", threads=1,
                    out=tmp_path / "shift.json", descriptions={"inverted": "the tiny images inverted"})
    s = res["sets"]["inverted"]
    assert s["overlap_left_out"] == 3  # the three training images' re-renderings
    assert s["n"] == len(shifted) - 3
    kept = [r for r in shifted if not r["path"].endswith(tuple(f"{lab}_{sorted((TINY / lab).glob('fm*.png'))[0].name}"
                                                              for lab in ("bag", "sneaker", "trouser")))]
    p = predict_proba(model, kept, spec, "cpu")
    acc = float((p.argmax(1) == [spec["class_names"].index(r["label"]) for r in kept]).mean())
    assert s["accuracy"]["value"] == pytest.approx(acc)
    own_acc = float((probs.argmax(1) == targets).mean())
    assert s["gap"]["value"] == pytest.approx(own_acc - acc)
    assert s["gap"]["ci_low"] < s["gap"]["value"] < s["gap"]["ci_high"]
    assert json.loads((tmp_path / "shift.json").read_text())["sets"]["inverted"]["description"] == "the tiny images inverted"


def test_a_class_the_model_lacks_is_a_config_error_naming_the_key(tmp_path):
    rows = _rows(lambda i: "test")
    rows[0] = {**rows[0], "label": "boot"}
    _write(tmp_path / "shift.csv", rows)
    _write(tmp_path / "own.csv", _rows(lambda i: "train"))
    with pytest.raises(CvauditError, match=r"models\.m\.shift_sets: dataset 'other' has class\(es\) boot"):
        shift_rows("m", "other", tmp_path / "shift.csv", tmp_path / "own.csv", ["bag", "sneaker", "trouser"], 10, 0)


def test_shift_sets_must_name_another_dataset():
    import yaml

    from cvaudit.config import validate_config

    from conftest import REPO
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["models"]["cnn_fmnist"]["shift_sets"] = ["fmnist"]
    with pytest.raises(CvauditError, match=r"models.cnn_fmnist.shift_sets': 'fmnist' is the model's own dataset"):
        validate_config(cfg)
    cfg["models"]["cnn_fmnist"]["shift_sets"] = ["nowhere"]
    with pytest.raises(CvauditError, match=r"'nowhere' is not a key of datasets"):
        validate_config(cfg)


def test_each_shifted_set_is_scored_as_out_of_distribution_against_the_own_test_images(tmp_path):
    from cvaudit.net.features import stream_features
    from cvaudit.robust.ood import image_scores, separation
    model, spec = tiny_cnn(seed=0)
    save_model(model, spec, tmp_path / "m.safetensors")
    own = _rows(lambda i: "train" if i < 2 else "test")
    _write(tmp_path / "own.csv", own)
    test, train = [r for r in own if r["split"] == "test"], [r for r in own if r["split"] == "train"]
    from cvaudit.net.pixel_space import predict_proba
    probs = predict_proba(model, test, spec, "cpu")
    np.savez(tmp_path / "probs.npz", probs=probs, targets=np.array([spec["class_names"].index(r["label"]) for r in test]))
    (tmp_path / "inv").mkdir()
    _write(tmp_path / "shift.csv", _rows(lambda i: "test", tmp_path / "inv"))
    options = {"max_images": 100, "ood": {"enabled": True, "neighbors": 2, "reference": 4}}
    res = run_shift(tmp_path / "m.safetensors", "m", tmp_path / "own.csv", tmp_path / "probs.npz",
                    {"inverted": tmp_path / "shift.csv"}, options, seed=0, device="cpu", threads=1,
                    out=tmp_path / "shift.json")
    assert res["ood"] == {"n_reference": 4, "n_in": len(test), "neighbors": 2, "knn": True}
    ood = res["sets"]["inverted"]["ood"]
    assert set(ood["scores"]) == {"msp", "energy", "knn"} and ood["n_out"] == res["sets"]["inverted"]["n"]
    # the same by hand: the reference is a seeded 4 of the 6 training images, the shifted images those left in
    import cvaudit.robust.shift as shift
    reference = stream_features(model, shift._sample(train, 4, 0), spec, "cpu")["embeddings"]
    kept = [r for r in _rows(lambda i: "test", tmp_path / "inv") if not r["original"].endswith(
        tuple(sorted((TINY / lab).glob("fm*.png"))[i].name for lab in ("bag", "sneaker", "trouser") for i in (0, 1)))]
    f_in, f_out = stream_features(model, test, spec, "cpu"), stream_features(model, kept, spec, "cpu")
    want = separation(image_scores(f_in["logits"], f_in["embeddings"], reference, 2),
                      image_scores(f_out["logits"], f_out["embeddings"], reference, 2), seed=0)
    for score in ("msp", "energy", "knn"):
        assert ood["scores"][score]["auroc"]["value"] == pytest.approx(want["scores"][score]["auroc"]["value"])
        assert ood["scores"][score]["fpr95"]["value"] == pytest.approx(want["scores"][score]["fpr95"]["value"])
    off = run_shift(tmp_path / "m.safetensors", "m", tmp_path / "own.csv", tmp_path / "probs.npz",
                    {"inverted": tmp_path / "shift.csv"}, {"max_images": 100}, seed=0, device="cpu", threads=1,
                    out=tmp_path / "off.json")
    assert off["ood"] is None and off["sets"]["inverted"]["ood"] is None


def test_an_export_is_scored_without_its_embedding(tmp_path, monkeypatch):
    import cvaudit.net.export as export
    model, spec = tiny_cnn(seed=0)
    save_model(model, spec, tmp_path / "m.safetensors")
    own = _rows(lambda i: "train" if i < 2 else "test")
    _write(tmp_path / "own.csv", own)
    test = [r for r in own if r["split"] == "test"]
    from cvaudit.net.pixel_space import predict_proba
    np.savez(tmp_path / "probs.npz", probs=predict_proba(model, test, spec, "cpu"),
             targets=np.array([spec["class_names"].index(r["label"]) for r in test]))
    (tmp_path / "inv").mkdir()
    _write(tmp_path / "shift.csv", _rows(lambda i: "test", tmp_path / "inv"))
    monkeypatch.setattr(export, "is_export", lambda net: True)  # a black box: logits only
    res = run_shift(tmp_path / "m.safetensors", "m", tmp_path / "own.csv", tmp_path / "probs.npz",
                    {"inverted": tmp_path / "shift.csv"}, {"max_images": 100, "ood": {"enabled": True, "neighbors": 2,
                                                                                       "reference": 4}},
                    seed=0, device="cpu", threads=1, out=tmp_path / "shift.json")
    assert res["ood"] == {"n_reference": 0, "n_in": len(test), "neighbors": 2, "knn": False}
    assert set(res["sets"]["inverted"]["ood"]["scores"]) == {"msp", "energy"}
