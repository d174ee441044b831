"""The slices stage (where the model fails): known answers on real image files.

A model built to key on brightness (it reads the stripes of an image only when the image is bright
enough) must show a weak slice at dark images and none at bright ones; a model whose mistakes do not
depend on any property must show no weak slice; per-group metrics equal a plain loop, the gap verdict
reads them, and group columns reach the manifest from a csv table and an idx archive."""
import csv
import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvaudit import CvauditError
from cvaudit.core.manifest import read_manifest
from cvaudit.core.stats import gap_interval
from cvaudit.data.image_properties import compute_properties, properties_of
from cvaudit.data.ingest_dataset import ingest
from cvaudit.report.behaviour_checks import group_gap, slice_gap
from cvaudit.report.judge import judge
from cvaudit.robust.slices import bin_values, group_metrics, run_slices

OPTIONS = {"bins": 4, "pairs": True, "min_size": 20, "alpha": 0.05, "min_group": 10}


def _stripes(cls: int, brightness: float, rng) -> np.ndarray:
    """A 24 x 24 grey image of horizontal (class 0) or vertical (class 1) stripes around a mean brightness."""
    line = (np.arange(24) // 3 % 2).astype(float) * 2 - 1
    pattern = line[:, None].repeat(24, 1) if cls == 0 else line[None, :].repeat(24, 0)
    x = brightness + 0.08 * pattern + rng.normal(0, 0.01, (24, 24))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


class BrightnessKeyed(torch.nn.Module):
    """Reads the stripe orientation, but its evidence is scaled by how far the image's mean brightness is
    above `floor`: below it, a bias towards class 0 wins, so dark class-1 images are misclassified."""

    def __init__(self, floor: float):
        super().__init__()
        self.floor = floor

    def forward(self, x):  # x: (N, 1, H, W) in [0, 1]
        dv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))  # horizontal stripes change down the rows
        dh = (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2, 3))
        gate = (x.mean((1, 2, 3)) - self.floor).clamp(min=0) * 40
        evidence = (dh - dv) * 50 * gate
        return torch.stack([0.5 - evidence, evidence - 0.5 + 0 * x.sum((1, 2, 3))], 1)


def _dataset(tmp_path, n=240, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cls, b = i % 2, rng.uniform(0.12, 0.88)
        path = tmp_path / f"img{i:03d}.png"
        Image.fromarray(_stripes(cls, b, rng)).save(path)
        rows.append({"path": str(path), "label": "hv"[cls], "split": "test", "width": 24, "height": 24, "groups": ""})
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest, rows


def _probs_file(tmp_path, rows, net, name="probs.npz"):
    x = torch.tensor(np.stack([np.asarray(Image.open(r["path"]), np.float32) / 255 for r in rows]))[:, None]
    with torch.no_grad():
        probs = torch.softmax(net(x), 1).numpy()
    targets = np.array(["hv".index(r["label"]) for r in rows])
    np.savez(tmp_path / name, probs=probs, targets=targets, paths=np.array([r["path"] for r in rows]))
    return tmp_path / name, probs, targets


def test_a_model_keyed_on_brightness_shows_a_weak_slice_at_dark_images_and_none_at_bright(tmp_path):
    manifest, rows = _dataset(tmp_path)
    compute_properties(manifest, tmp_path / "properties.csv")
    probs, p, t = _probs_file(tmp_path, rows, BrightnessKeyed(floor=0.35))
    acc = (p.argmax(1) == t)
    bright = np.array([properties_of(np.asarray(Image.open(r["path"]).convert("RGB")))["brightness"] for r in rows])
    assert acc[bright > 0.5].mean() > 0.95 and acc[bright < 0.3].mean() < 0.65  # the model is what it claims
    res = run_slices(tmp_path / "properties.csv", probs, manifest, OPTIONS, [], tmp_path / "slices.json")
    weak = [s for s in res["weak_slices"]["slices"] if s["weak"]]
    assert weak, "the dark images must be flagged"
    single = [s for s in weak if len(s["where"]) == 1]
    assert single and all(s["where"][0]["property"] in ("brightness",) for s in single[:1])
    assert single[0]["where"][0]["bin"].endswith("(lowest)")
    for s in weak:  # every weak slice is a dark one: it includes the lowest brightness bin (or a proxy of it)
        assert any(w["property"] == "brightness" and "highest" not in w["bin"] for w in s["where"]) or \
            all(w["property"] != "brightness" for w in s["where"])
    assert not any(w["property"] == "brightness" and w["bin"].endswith("(highest)") for s in weak for w in s["where"])
    worst = slice_gap({"robust": {"slices": res}})
    assert worst["ci_low"] > 0.2 and judge(worst, {"warn": 0.1, "fail": 0.2}, False) == "fail"
    assert json.loads((tmp_path / "slices.json").read_text())["weak_slices"]["weak"] == len(weak)
    bins = res["properties"]["brightness"]["bins"]
    assert bins[0]["accuracy"]["value"] < 0.7 < bins[-1]["accuracy"]["value"]


def test_mistakes_that_depend_on_no_property_leave_no_weak_slice(tmp_path):
    manifest, rows = _dataset(tmp_path, seed=1)
    compute_properties(manifest, tmp_path / "properties.csv")
    probs, p, t = _probs_file(tmp_path, rows, BrightnessKeyed(floor=0.0))
    wrong = np.random.default_rng(7).random(len(rows)) < 0.15  # a random 15% flipped, independent of the image
    p[wrong] = p[wrong][:, ::-1]
    np.savez(probs, probs=p, targets=t, paths=np.array([r["path"] for r in rows]))
    res = run_slices(tmp_path / "properties.csv", probs, manifest, OPTIONS, [], tmp_path / "slices.json")
    assert res["weak_slices"]["n_tested"] >= 12
    assert res["weak_slices"]["weak"] == 0
    assert judge(slice_gap({"robust": {"slices": res}}), {"warn": 0.1, "fail": 0.2}, False) != "fail"


def test_binning_merges_tied_quantiles_and_skips_a_constant_property():
    idx, names = bin_values(np.r_[np.zeros(50), np.arange(50)], 4)
    assert len(names) == len(set(idx.tolist())) and idx.min() == 0
    assert bin_values(np.full(30, 28.0), 4) is None
    idx, names = bin_values(np.r_[np.zeros(5), np.ones(7)], 4, categorical=True)
    assert [n["name"] for n in names] == ["0", "1"] and idx.sum() == 7


def test_group_metrics_equal_a_plain_loop_and_the_gap_verdict_reads_them():
    rng = np.random.default_rng(3)
    n = 600
    groups = np.array(["site A", "site B", "site C"])[rng.integers(0, 3, n)]
    targets = rng.integers(0, 3, n)
    right = rng.random(n) < np.where(groups == "site C", 0.55, 0.9)  # site C is much worse
    pred = np.where(right, targets, (targets + 1) % 3)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), pred] = 0.8
    res = group_metrics(groups, probs, targets, min_group=10, alpha=0.05)
    for g in res["groups"]:
        m = groups == g["value"]
        assert g["n"] == m.sum() and g["accuracy"]["value"] == pytest.approx(right[m].mean())
        assert g["confidence"] == pytest.approx(0.8)
        assert g["ece"] == pytest.approx(abs(0.8 - right[m].mean()))  # one confidence bin: |confidence - accuracy|
        assert np.array(g["confusion"]).trace() == right[m].sum()
    assert res["gap"]["worst"] == "site C" and res["gap"]["value"] > 0.25 and res["gap"]["ci_low"] > 0.15
    est = group_gap({"robust": {"slices": {"groups": {"site": res}}}})
    assert judge(est, {"warn": 0.05, "fail": 0.1}, False) == "fail"
    even = np.array(["x", "y"])[np.arange(n) % 2]  # the same accuracy in both halves, by construction
    right2 = (np.arange(n) // 2) % 5 != 0
    probs2 = np.full((n, 3), 0.1)
    probs2[np.arange(n), np.where(right2, targets, (targets + 1) % 3)] = 0.8
    same = group_metrics(even, probs2, targets, 10, 0.05)
    assert same["gap"]["value"] == 0 and same["gap"]["ci_low"] < 0 < same["gap"]["ci_high"]


def test_the_gap_interval_clears_zero_for_equal_groups_about_alpha_of_the_time():
    """Best minus worst of two groups drawn from the same accuracy: the interval's lower bound is above 0
    in about 5% of draws (the selection of the better group is the test's other tail)."""
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(400):
        a, b = rng.binomial(150, 0.8), rng.binomial(120, 0.8)
        (ka, na), (kb, nb) = sorted([(a, 150), (b, 120)], key=lambda t: -t[0] / t[1])
        hits += gap_interval(ka, na, kb, nb, 0.05)[0] > 0
    assert hits / 400 < 0.08


def test_group_columns_reach_the_manifest_and_a_missing_one_is_named(tmp_path):
    rng = np.random.default_rng(0)
    with open(tmp_path / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "site"])
        for i in range(12):
            Image.fromarray(_stripes(i % 2, 0.3 + 0.04 * i, rng)).save(tmp_path / f"{i}.png")
            w.writerow([f"{i}.png", "hv"[i % 2], "north" if i < 6 else "south"])
    ds = {"source": "csv", "path": str(tmp_path / "data.csv"), "groups": ["site"], "split": {"val": 0.2, "test": 0.3}}
    ingest(ds, "d", 0, tmp_path / "o")
    rows = read_manifest(tmp_path / "o" / "manifest.csv")
    assert sorted(json.loads(r["groups"])["site"] for r in rows) == ["north"] * 6 + ["south"] * 6
    with pytest.raises(CvauditError, match=r"datasets.\*.groups names 'scanner'.*columns it has: site"):
        ingest({**ds, "groups": ["scanner"]}, "d", 0, tmp_path / "o2")


def test_an_idx_source_offers_the_archive_each_image_came_from(tmp_path):
    def archive(name, x, y):
        (tmp_path / f"{name}-images-idx3-ubyte.gz").write_bytes(gzip.compress(
            b"\0\0\x08\x03" + len(x).to_bytes(4, "big") + (8).to_bytes(4, "big") * 2 + x.tobytes()))
        (tmp_path / f"{name}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
            b"\0\0\x08\x01" + len(y).to_bytes(4, "big") + y.astype(np.uint8).tobytes()))
    rng = np.random.default_rng(0)
    archive("train", rng.integers(0, 255, (10, 8, 8), dtype=np.uint8), np.arange(10) % 2)
    archive("t10k", rng.integers(0, 255, (4, 8, 8), dtype=np.uint8), np.arange(4) % 2)
    ingest({"source": "idx", "path": str(tmp_path), "groups": ["source_file"]}, "x", 0, tmp_path / "o")
    files = [json.loads(r["groups"])["source_file"] for r in read_manifest(tmp_path / "o" / "manifest.csv")]
    assert sorted(files) == ["t10k"] * 4 + ["train"] * 10


def test_the_error_clusters_of_the_embedding_find_the_dark_images_and_describe_them(tmp_path):
    """The stage reads the represent stage's embeddings (here: brightness and the stripe evidence a model would
    embed), in its own order, and the cluster it flags is of the dark images, set apart by brightness."""
    from cvaudit.core.files import save_npz
    manifest, rows = _dataset(tmp_path)
    compute_properties(manifest, tmp_path / "properties.csv")
    probs, p, t = _probs_file(tmp_path, rows, BrightnessKeyed(floor=0.35))
    with np.load(probs) as z:
        np.savez(probs, **z, class_names=np.array(["h", "v"]))
    x = np.stack([np.asarray(Image.open(r["path"]), np.float32) / 255 for r in rows])
    emb = np.column_stack([x.mean((1, 2)) * 4, (np.abs(np.diff(x, axis=2)).mean((1, 2))
                                                 - np.abs(np.diff(x, axis=1)).mean((1, 2))) * 20])
    order = np.random.default_rng(0).permutation(len(rows))  # the represent stage's own order
    save_npz(tmp_path / "embeddings.npz", {}, embeddings=emb[order], paths=np.array([rows[i]["path"] for i in order]),
             train_embeddings=emb[:40], train_paths=np.array([f"train{i}.png" for i in range(40)]))
    options = {**OPTIONS, "error_clusters": 6}
    res = run_slices(tmp_path / "properties.csv", probs, manifest, options, [], tmp_path / "slices.json",
                     embeddings=tmp_path / "embeddings.npz")
    ec = res["error_clusters"]
    flagged = [c for c in ec["clusters"] if c["flagged"]]
    assert ec["k"] == 6 and flagged, [(c["n"], c["errors"], c["p_adjusted"]) for c in ec["clusters"]]
    dark = {r["path"] for r, b in zip(rows, x.mean((1, 2))) if b < 0.35}
    assert all(im["path"] in dark for c in flagged for im in c["images"])
    assert flagged[0]["properties"][0]["property"] == "brightness" and flagged[0]["properties"][0]["shift"] < -1
    assert flagged[0]["mistakes"][0]["value"] == "v -> h"
    near = [int(p[5:-4]) for p in flagged[0]["nearest_training"]]  # the training images here are the first 40
    assert len(near) == 4 and all(x[i].mean() < 0.4 for i in near)  # dark ones, like the cluster
    assert run_slices(tmp_path / "properties.csv", probs, manifest, OPTIONS, [], tmp_path / "s2.json")[
        "error_clusters"] is None
    save_npz(tmp_path / "stale.npz", {}, embeddings=emb[1:], paths=np.array([r["path"] for r in rows[1:]]))
    with pytest.raises(CvauditError, match=r"stale\.npz embeds other test images.*--forcerun represent"):
        run_slices(tmp_path / "properties.csv", probs, manifest, options, [], tmp_path / "s3.json",
                   embeddings=tmp_path / "stale.npz")
