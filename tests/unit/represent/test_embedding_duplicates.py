"""Near duplicates in a model's embedding space (the embedding_duplicates stage): the pixel check recovers a
planted mirror and shift and refuses distinct garments; the stage, on real Fashion-MNIST files and a real
CNN, finds every planted copy across splits (the mirrored and shifted ones the perceptual hash misses), marks
which the hash found too, pairs nothing else, and feeds the leakage verdict."""
import csv

import numpy as np
import pytest
from PIL import Image

from cvaudit.data.copies import distance
from cvaudit.net.models import save_model
from cvaudit.represent.embedding_duplicates import compare_side, nearest, run_embedding_duplicates, thumbnail

from conftest import fmnist_images, reencoded
from tiny_models import tiny_cnn

OPTIONS = {"enabled": True, "neighbors": 10, "max_reference": 100000, "size": 32, "blur": 0.8, "max_shift": 0.15,
           "max_pixel_difference": 0.0108}


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """a moved by (dy, dx) pixels, the uncovered border black (as a re-framed photo, not wrapped round)."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.mark.slow
def test_the_pixel_check_recovers_a_mirror_and_a_shift_and_refuses_distinct_garments(tmp_path):
    rgb, _ = fmnist_images(40, seed=3)
    grey = rgb[..., 0].astype(np.float32) / 255
    copy = _shift(grey[0][:, ::-1], 2, -1)  # mirrored, then moved down 2 and left 1
    r = distance(np.stack([copy, grey[1]]), np.stack([grey[0], grey[2]]), max_shift=0.15)
    assert r["distance"][0] < 1e-5  # exact where they overlap
    assert r["mirror"][0] == 1 and sorted(np.abs(r["shift"][0])) == [1, 2] and r["rotation"][0] == 0
    assert r["distance"][1] > 0.05
    # every pair of 40 distinct garments stays above the stage's threshold, at any mirror and shift
    i, j = np.triu_indices(40, 1)
    paths = [tmp_path / f"{k}.png" for k in range(len(rgb))]
    for p, g in zip(paths, rgb):
        Image.fromarray(g).save(p)
    side = compare_side(paths, OPTIONS["size"])
    assert side == 28 and compare_side(paths, 16) == 16  # the images' own side, never upsampled to 32
    thumbs = np.stack([thumbnail(p, side, OPTIONS["blur"]) for p in paths])
    d = distance(thumbs[i], thumbs[j], max_shift=OPTIONS["max_shift"])["distance"]
    assert d.min() > OPTIONS["max_pixel_difference"], d.min()


def test_nearest_finds_each_querys_source_after_centring():
    rng = np.random.default_rng(0)
    common = rng.normal(size=64) * 50  # a large part every row shares, as post-ReLU features do
    ref = common + rng.normal(size=(300, 64))
    pick = rng.choice(300, 20, replace=False)
    idx, dist = nearest(ref[pick] + 0.05 * rng.normal(size=(20, 64)), ref, k=3)
    assert idx.shape == dist.shape == (20, 3) and (idx[:, 0] == pick).all()
    assert (np.diff(dist, axis=1) >= 0).all() and dist[:, 0].max() < 0.01
    # centred, the other rows are far (cosine distance 0.47 or more here); uncentred they would all be within 0.001
    assert dist[:, 1:].min() > 0.3
    assert nearest(ref[:2], ref[:2], k=5)[0].shape == (2, 2)  # never more neighbours than reference rows


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """160 training and 40 test Fashion-MNIST files plus four copies of training images in test: two re-encoded
    as JPEG (the data audit's pHash finds them), two mirrored and shifted (it does not); a CNN saved as the
    workflow saves one; the data audit run on it."""
    from cvaudit.data.data_audit import run_data_audit
    tmp = tmp_path_factory.mktemp("embdup")
    rgb, labels = fmnist_images(200, seed=5)
    names = [str(c) for c in range(10)]
    rows = []
    for k, (im, y) in enumerate(zip(rgb, labels)):
        p = tmp / f"img{k:03d}.png"
        Image.fromarray(im).save(p)
        rows.append({"path": str(p), "label": names[y], "split": "train" if k < 160 else "test"})
    copies = {0: reencoded(rgb[0], 28, 70), 1: reencoded(rgb[1], 28, 80),
              2: _shift(rgb[2][:, ::-1], 1, 2), 3: _shift(rgb[3][:, ::-1], -2, 0)}
    for k, im in copies.items():
        p = tmp / f"copy{k}.png"
        Image.fromarray(im).save(p)
        rows.append({"path": str(p), "label": names[labels[k]], "split": "test"})
    manifest = tmp / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    run_data_audit(manifest, {"size": 16, "max_distance": 8, "max_pixel_difference": 0.02, "max_label_images": 1000,
                              "folds": 3, "outlier_z": 5.0, "copies": {"enabled": False}}, seed=0, out=tmp / "audit.npz")
    model, spec = tiny_cnn(seed=0, channels=(16, 32), class_names=names)
    save_model(model, spec, tmp / "model.safetensors")
    from cvaudit.represent.represent import run_represent
    run_represent(tmp / "model.safetensors", manifest, {"k": 3, "layers": 2, "cka_images": 10, "train_images": 5}, 0,
                  "cpu", 1,
                  tmp / "embeddings.npz")
    return tmp, rows


def test_the_stage_finds_every_planted_copy_and_nothing_else(planted):
    from cvaudit.core.files import load_npz
    tmp, rows = planted
    meta = run_embedding_duplicates(tmp / "model.safetensors", tmp / "manifest.csv", tmp / "embeddings.npz",
                                    tmp / "audit.npz", OPTIONS, 0, "cpu", 1, tmp / "dup.npz")
    e = load_npz(tmp / "dup.npz")
    found = {(str(e["test_paths"][i]).rsplit("/", 1)[-1], str(e["ref_paths"][j]).rsplit("/", 1)[-1]): bool(h)
             for i, j, h in zip(e["test_index"], e["ref_index"], e["by_phash"])}
    assert found == {("copy0.png", "img000.png"): True, ("copy1.png", "img001.png"): True,
                     ("copy2.png", "img002.png"): False, ("copy3.png", "img003.png"): False}
    assert meta["pairs"] == 4 and meta["new_pairs"] == 2 and meta["leaked_only_by_embedding"] == 2
    assert meta["leaked"] == 4 and meta["n_test"] == 44 and meta["n_reference"] == 160
    assert meta["leaked_share"]["value"] == pytest.approx(4 / 44)
    assert e["mirror"][~e["by_phash"]].all()
    # what only the embedding found comes first (the report shows it first)
    assert not e["by_phash"][:2].any() and e["by_phash"][2:].all()


def test_the_leakage_verdict_counts_the_embeddings_finds(planted):
    from cvaudit.core.files import load_npz
    from cvaudit.report.shortcut_checks import leakage
    from cvaudit.report.stage_sections import data_audit_section
    tmp, _ = planted
    run_embedding_duplicates(tmp / "model.safetensors", tmp / "manifest.csv", tmp / "embeddings.npz",
                             tmp / "audit.npz", OPTIONS, 0, "cpu", 1, tmp / "dup2.npz")
    without = data_audit_section(tmp / "audit.npz", 4)
    with_emb = data_audit_section(tmp / "audit.npz", 4, embedding_path=tmp / "dup2.npz")
    assert leakage({"data_audit": without})["value"] == pytest.approx(2 / 44)  # the pHash's two
    assert leakage({"data_audit": with_emb})["value"] == pytest.approx(4 / 44)
    shown = with_emb["embedding"]["pairs"]
    assert [p["by_phash"] for p in shown] == [False, False, True, True]
    assert shown[0]["how"].startswith("mirrored") and shown[0]["splits"] == "test · train"
    assert load_npz(tmp / "audit.npz")["meta"]["leaked"] == 2


def test_nothing_to_search_is_said_not_scored(planted, tmp_path):
    tmp, rows = planted
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "split"])
        w.writeheader()
        w.writerows([r for r in rows if r["split"] == "test"])
    meta = run_embedding_duplicates(tmp / "model.safetensors", manifest, tmp / "embeddings.npz", tmp / "audit.npz",
                                    OPTIONS, 0, "cpu", 1, tmp_path / "dup.npz")
    assert meta["why"] == "the dataset has no training or validation image" and meta["leaked_share"] is None


@pytest.mark.slow
def test_the_pixel_check_in_chunks_equals_it_at_once(planted):
    from cvaudit.represent.embedding_duplicates import confirm
    _, rows = planted
    test = [r["path"] for r in rows if r["split"] == "test"]
    ref = [r["path"] for r in rows if r["split"] == "train"]
    idx = np.random.default_rng(0).integers(0, len(ref), (len(test), 3))
    idx[-4:, 0] = [0, 1, 2, 3]  # the copies' sources among the candidates
    whole, parts = confirm(test, ref, idx, OPTIONS), confirm(test, ref, idx, OPTIONS, chunk=7)
    for k in ("difference", "mirror", "shift", "query"):
        np.testing.assert_array_equal(whole[k], parts[k])
    assert whole["side"] == 28 and (whole["difference"].reshape(-1, 3)[-4:, 0] <= OPTIONS["max_pixel_difference"]).all()
    # the shift searched is options["max_shift"]: another one gives other alignments
    still = confirm(test, ref, idx, {**OPTIONS, "max_shift": 0.0})
    assert np.abs(still["difference"] - whole["difference"]).max() > 0.01


def test_the_represent_stage_embeds_a_seeded_sample_of_training_images(planted):
    from cvaudit.core.files import load_npz
    tmp, rows = planted
    e = load_npz(tmp / "embeddings.npz", keys=("train_embeddings", "train_paths", "embeddings"))
    train = {r["path"] for r in rows if r["split"] == "train"}
    assert e["train_embeddings"].shape == (5, e["embeddings"].shape[1]) and len(set(e["train_paths"])) == 5
    assert set(map(str, e["train_paths"])) <= train
