"""The data audit's checks on planted known answers: near duplicates (resized, re-encoded) found across splits
and none among distinct images; flipped labels among cleanlab's candidates; outliers by robust z-score."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvaudit.data.data_audit import (
    class_balance,
    label_issues,
    leakage,
    near_duplicates,
    out_of_sample_probabilities,
    phash,
    quality_outliers,
)

from conftest import FMNIST, fmnist_images, reencoded

pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")


def test_planted_near_duplicates_are_found_and_distinct_images_are_not():
    images, _ = fmnist_images(300)
    plants = ((3, 56, 70), (10, 40, 50), (20, 28, 30), (5, 20, 90))  # (image, resized to px, JPEG quality)
    copies = [reencoded(images[i], s, q) for i, s, q in plants]
    every = list(images) + copies
    hashes = np.array([phash(x) for x in every], dtype=np.uint64)
    pixels = np.array([_grey(x) for x in every])
    hash_only = {(int(i), int(j)) for i, j, _ in near_duplicates(hashes, max_distance=8)}
    # the pigeonhole candidates miss nothing a brute-force comparison finds
    d = np.array([[bin(int(a) ^ int(b)).count("1") for b in hashes] for a in hashes])
    assert hash_only == {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes)) if d[i, j] <= 8}
    assert len([p for p in hash_only if p[1] < 300]) > 20  # on 28 px garments a pHash alone pairs distinct images
    found = {(int(i), int(j)) for i, j, _ in near_duplicates(hashes, 8, pixels, max_difference=0.02)}
    assert found == {(3, 300), (10, 301), (20, 302), (5, 303)}  # every planted copy, and no distinct pair


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L").resize((16, 16), Image.BILINEAR)).ravel()


def test_leakage_counts_test_images_with_a_copy_in_train_or_val():
    splits = np.array(["train", "test", "test", "val", "test"])
    pairs = np.array([[0, 1, 2], [2, 4, 1], [3, 4, 0]])  # train-test, test-test, val-test
    out = leakage(pairs, splits)
    assert out["leaked"] == [1, 4] and out["by_split"] == {"test-train": 1, "test-test": 1, "test-val": 1}
    assert out["leaked_share"]["value"] == pytest.approx(2 / 3) and out["leaked_share"]["n"] == 3


@pytest.mark.slow
def test_flipped_labels_are_among_cleanlabs_candidates():
    images, labels = fmnist_images(600, seed=1)
    x = images[..., 0].reshape(len(images), -1).astype(np.float32) / 255
    y = labels.astype(int).copy()
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y), 12, replace=False)
    y[flipped] = (y[flipped] + 5) % 10  # e.g. T-shirt -> sandal: far from the truth
    issues = label_issues(out_of_sample_probabilities(x, y, seed=0), y)
    found = set(issues["index"].tolist())
    assert len(found & set(flipped.tolist())) >= 9  # most of the 12 planted flips
    assert len(found) < 120  # and not a fifth of the dataset
    top = issues["index"][:12]
    assert (issues["given"][:12] == y[top]).all() and (issues["self_confidence"] <= 1).all()


def test_quality_outliers_by_robust_z_score():
    rng = np.random.default_rng(0)
    props = {k: rng.normal(0.5, 0.05, 200) for k in ("brightness", "contrast", "sharpness")}
    props["aspect"] = np.ones(200)
    props["brightness"][[7, 9]] = [0.01, 0.99]
    props["aspect"][5] = 3.0
    out = quality_outliers(props, z=5.0)
    assert set(out["brightness"]["index"].tolist()) == {7, 9} and out["brightness"]["low"] == 1
    assert out["aspect"]["index"].tolist() == [5] and len(out["contrast"]["index"]) == 0


def test_class_balance():
    b = class_balance(["a", "a", "b", "a"], ["train", "test", "train", "val"], ["a", "b"])
    assert b["counts"]["train"] == {"a": 1, "b": 1} and b["total"] == {"a": 3, "b": 1} and b["imbalance"] == 3


def test_the_label_check_reads_a_seeded_sample_beyond_its_cap(tmp_path, tiny_copy):
    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.data_audit import label_sample, run_data_audit
    from cvaudit.data.ingest_dataset import ingest
    assert label_sample(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    s = label_sample(100, 30, 1)
    assert len(s) == 30 and (np.diff(s) > 0).all() and s.tolist() == label_sample(100, 30, 1).tolist()
    ingest({"source": "imagefolder", "path": str(tiny_copy)}, "t", 0, tmp_path)
    n = len(read_manifest(tmp_path / "manifest.csv"))
    options = {"max_distance": 8, "max_pixel_difference": 0.02, "size": 16, "folds": 2, "outlier_z": 5.0,
               "max_label_images": n - 6, "copies": {"enabled": False}}
    meta = run_data_audit(tmp_path / "manifest.csv", options, seed=0, out=tmp_path / "audit.npz")
    assert meta["n"] == n and meta["label_images"] == n - 6 and meta["label_issues"] is not None


def test_the_models_own_test_probabilities_flag_flipped_labels():
    """A model's test probabilities are out of sample: confident learning on them finds flipped test labels."""
    from cvaudit.core.labels import model_label_issues
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(4), 50)
    probs = np.full((200, 6), 0.01)  # six outputs, four of them in the test split
    probs[np.arange(200), targets] = 0.9
    probs += rng.uniform(0, 0.05, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    flipped = rng.choice(200, 8, replace=False)
    given = targets.copy()
    given[flipped] = (targets[flipped] + 1) % 4
    found = model_label_issues(probs, given)
    idx = found["issues"]["index"]
    hit = np.isin(idx, flipped)
    assert hit.sum() >= 7 and len(idx) <= 12  # 7 of the 8 flipped labels at least, among few candidates
    assert (found["issues"]["suggested"][hit] == targets[idx[hit]]).all()  # and the true class suggested
    few = model_label_issues(probs[:104], targets[:104])  # class 2 has 4 test images: too few
    assert few["issues"] is None and "at least 5" in few["why"]
    assert "one class" in model_label_issues(probs[:6], given[:6])["why"]


@pytest.mark.slow
def test_the_audit_finds_copies_a_person_would_recognise_and_says_what_it_searched(tmp_path):
    """A real Fashion-MNIST split (imagefolder, 200 images) with copies of training images planted in test:
    brightened, flattened, mirrored, rotated, cropped and resized back. The hash finds few of them; the copy
    search finds every one, and leaks nothing else."""
    from PIL import ImageEnhance

    from cvaudit.config import validate_config
    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.data_audit import run_data_audit
    from cvaudit.data.ingest_dataset import ingest
    images, labels = fmnist_images(200, seed=5)
    root = tmp_path / "imgs"
    for i, (x, y) in enumerate(zip(images, labels)):
        (root / f"c{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(root / f"c{y}" / f"{i:04d}.png")
    cfg = validate_config({"datasets": {"d": {"source": "imagefolder", "path": str(root), "split": {"val": 0.1, "test": 0.3}}},
                           "models": {"m": {"dataset": "d", "arch": "simple_cnn"}}})
    ingest(cfg["datasets"]["d"], "d", 0, tmp_path / "d")
    train = [r for r in read_manifest(tmp_path / "d" / "manifest.csv") if r["split"] == "train"]
    kinds = {"brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
             "flatter": lambda im: ImageEnhance.Contrast(im).enhance(0.75),
             "mirrored": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
             "rotated": lambda im: im.rotate(6, Image.BILINEAR),
             "cropped": lambda im: im.crop((1, 1, 27, 27)).resize((28, 28), Image.BILINEAR)}
    planted = {}
    rows = read_manifest(tmp_path / "d" / "manifest.csv")
    for (kind, make), src in zip(kinds.items(), train[::7]):
        with Image.open(src["path"]) as im:
            copy = make(im.convert("RGB"))
        path = tmp_path / "d" / f"copy_{kind}.png"
        copy.save(path)
        rows.append({**src, "path": str(path), "split": "test", "sha256": kind})
        planted[str(path)] = src["path"]
    import csv
    import json
    with open(tmp_path / "d" / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    info = json.loads((tmp_path / "d" / "dataset.json").read_text())
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({**info, "n_images": len(rows)}))
    meta = run_data_audit(tmp_path / "d" / "manifest.csv", cfg["data_audit"], 0, tmp_path / "audit.npz")
    from cvaudit.core.files import load_npz
    a = load_npz(tmp_path / "audit.npz")
    paths = [str(p) for p in a["paths"]]
    found = {(paths[i], paths[j]) for i, j, _ in a["pairs"]} | {(paths[j], paths[i]) for i, j, _ in a["pairs"]}
    missed = [Path(c).name for c, src in planted.items() if (c, src) not in found]
    assert not missed, missed
    leaked = {paths[i] for i in a["leaked"]}
    assert leaked == set(planted)  # every copy, and no distinct test image
    assert "brightness" in meta["copies"]["searched"] and "colour changes" in meta["copies"]["not_searched"]


def test_the_report_reads_the_label_issues_the_evaluation_wrote(tmp_path):
    """The evaluation stores confident learning's candidates beside the test probabilities; the data audit's
    section shows exactly those, by path and class name, without running cleanlab; a probabilities file
    written without them is named with the command that rebuilds it."""
    from cvaudit import CvauditError
    from cvaudit.core.labels import model_label_issues
    from cvaudit.model.evaluate_model import write_probs
    from cvaudit.report.stage_sections import data_audit_section
    rng = np.random.default_rng(1)
    targets = np.repeat(np.arange(3), 20)
    probs = np.full((60, 3), 0.05)
    probs[np.arange(60), targets] = 0.9
    flipped = np.array([3, 25, 47])
    given = targets.copy()
    given[flipped] = (targets[flipped] + 1) % 3
    paths, names = [f"/img/{k}.png" for k in range(60)], ["ankle boot", "bag", "coat"]
    write_probs(tmp_path / "probs.npz", probs + rng.uniform(0, 0.01, probs.shape), given, paths, names)
    audit = tmp_path / "audit.npz"
    with np.load(tmp_path / "probs.npz") as z:
        expected = model_label_issues(z["probs"], z["targets"])["issues"]
        np.savez(audit, paths=np.array(paths[:1]), splits=np.array(["test"]), labels=np.array([0]),
                 pairs=np.zeros((0, 3), np.int64), meta=np.array('{"classes": ["ankle boot", "bag", "coat"], "outliers": []}'))
    shown = data_audit_section(audit, 0, probs_path=tmp_path / "probs.npz")["by_model"]
    assert shown["n"] == 60 and shown["why"] == "" and shown["count"] == len(expected["index"]) == 3
    assert sorted(e["path"] for e in shown["all"]) == sorted(paths[i] for i in flipped)
    assert {(e["given"], e["suggested"]) for e in shown["all"]} == {(names[given[i]], names[targets[i]]) for i in flipped}
    write_probs(tmp_path / "few.npz", probs[:8], targets[:8], paths[:8], names)  # one class: nothing searched
    few = data_audit_section(audit, 0, probs_path=tmp_path / "few.npz")["by_model"]
    assert few["count"] is None and "one class" in few["why"]
    np.savez(tmp_path / "old.npz", probs=probs, targets=targets, paths=np.array(paths), class_names=np.array(names))
    with pytest.raises(CvauditError, match="--forcerun"):
        data_audit_section(audit, 0, probs_path=tmp_path / "old.npz")
