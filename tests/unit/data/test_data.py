import csv

import numpy as np
import pytest

from cvaudit import CvauditError
from cvaudit.core.images import check_image
from cvaudit.core.manifest import read_manifest
from cvaudit.data.ingest_dataset import hashed_split, ingest
from cvaudit.data.sources import imagenet_categories, source_files

from conftest import FMNIST


def test_bad_files_are_rejected_with_reasons_never_a_crash(tiny_copy, tmp_path):
    info = ingest({"source": "imagefolder", "path": str(tiny_copy), "split": {"val": 0.2, "test": 0.3}},
                  "tiny", seed=1, out_dir=tmp_path / "out")
    rejected = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in csv.DictReader(open(tmp_path / "out/rejected.csv"))}
    assert set(rejected) == {"corrupt.png", "truncated.png", "empty.jpg", "notes.txt"}
    assert "0 bytes" in rejected["empty.jpg"] and "extension" in rejected["notes.txt"]
    assert "decoded" in rejected["corrupt.png"] and "decoded" in rejected["truncated.png"]
    rows = read_manifest(tmp_path / "out/manifest.csv")
    assert len(rows) == 42 == info["n_images"] and info["classes"] == ["bag", "sneaker", "trouser"]
    assert all(len(r["sha256"]) == 64 and r["width"] == "28" and r["mode"] == "L" for r in rows)


def test_split_is_seeded_and_drawn_from_content(clean_folder, tmp_path):
    ds = {"source": "imagefolder", "path": str(clean_folder), "split": {"val": 0.2, "test": 0.3}}
    ingest(ds, "a", seed=3, out_dir=tmp_path / "a")
    ingest(ds, "b", seed=3, out_dir=tmp_path / "b")
    ingest(ds, "c", seed=4, out_dir=tmp_path / "c")
    a, b, c = (read_manifest(tmp_path / x / "manifest.csv") for x in "abc")
    assert a == b and [r["split"] for r in a] != [r["split"] for r in c]
    for label in ("bag", "sneaker", "trouser"):  # 14 per class: every split has an image in every class
        got = [r["split"] for r in a if r["label"] == label]
        assert min(got.count("train"), got.count("val"), got.count("test")) >= 1
    for r in a:  # the split is a function of the content and the seed (small classes aside: none here)
        assert r["split"] == hashed_split(r["sha256"], 3, 0.2, 0.3)


def test_hashed_shares_follow_the_config_within_binomial_error():
    keys = [f"{k:064x}" for k in range(20000)]
    got = [hashed_split(k, 0, 0.15, 0.25) for k in keys]
    for name, share in (("test", 0.25), ("val", 0.15)):
        sd = (share * (1 - share) / len(keys)) ** 0.5
        assert abs(got.count(name) / len(keys) - share) < 4 * sd, name


def test_empty_class_and_single_class_are_clear_errors(tiny_copy, tmp_path):
    for p in (tiny_copy / "bag").iterdir():
        p.unlink()
    (tiny_copy / "bag" / "broken.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(CvauditError, match=r"class\(es\) with no usable image: bag"):
        ingest({"source": "imagefolder", "path": str(tiny_copy)}, "t", 0, tmp_path / "o1")
    single = tmp_path / "single"
    (single / "only").mkdir(parents=True)
    for p in list((tiny_copy / "trouser").glob("fm*.png"))[:3]:
        p.rename(single / "only" / p.name)
    with pytest.raises(CvauditError, match="at least two"):
        ingest({"source": "imagefolder", "path": str(single)}, "s", 0, tmp_path / "o2")


def test_csv_source_resolves_relative_paths_and_lists_missing_files(clean_folder, tmp_path):
    table = clean_folder / "labels.csv"
    lines = ["path,label"] + [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(clean_folder.glob("*/*.png"))]
    table.write_text("\n".join(lines + ["bag/missing.png,bag"]) + "\n")
    files = source_files({"source": "csv", "path": str(table)})
    assert str(table) in files and len(files) == 1 + 42 + 1  # the missing file too: its arrival reruns ingestion
    info = ingest({"source": "csv", "path": str(table)}, "c", 0, tmp_path / "o")
    assert info["n_images"] == 42 and info["n_rejected"] == 1


@pytest.mark.skipif(not FMNIST.exists(), reason="Debian dataset-fashion-mnist not installed (make setup)")
def test_idx_source_writes_only_the_kept_images(tmp_path):
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    info = ingest({"source": "idx", "path": str(FMNIST), "class_names": names, "max_per_class": 5,
                   "split": {"val": 0.2, "test": 0.2}}, "f", 0, tmp_path / "o")
    assert info["classes"] == names and info["n_images"] == 50
    assert len(list((tmp_path / "o" / "images").rglob("*.png"))) == 50


def test_sample_sets(tmp_path):
    info = ingest({"source": "foolbox_imagenet", "split": {"val": 0.0, "test": 1.0}}, "im", 0, tmp_path / "im")
    assert info["n_images"] == 20 and len(info["classes"]) == 19  # two photos of class 609 (jeep)
    assert all(r["split"] == "test" for r in read_manifest(tmp_path / "im" / "manifest.csv"))
    assert "bald eagle" in info["classes"] and set(info["classes"]) <= set(imagenet_categories())
    lfw = ingest({"source": "lfw_subset"}, "lfw", 0, tmp_path / "lfw")
    assert lfw["classes"] == ["face", "non-face"] and lfw["n_images"] == 200


def test_imagenet_names_are_unique():
    names = imagenet_categories()
    assert len(names) == len(set(names)) == 1000 and names[609] == "jeep"


def test_check_image_accepts_every_listed_format(tmp_path):
    from PIL import Image
    arr = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    for ext in ("png", "jpg", "bmp", "webp", "tif"):
        Image.fromarray(arr).save(tmp_path / f"x.{ext}")
        info, reason = check_image(tmp_path / f"x.{ext}")
        assert reason is None and (info["width"], info["height"]) == (30, 20), ext


# Known answers for the split and the deduplication.
def test_the_unit_draw_is_the_first_eight_bytes_of_a_sha256_of_the_parts():
    import hashlib

    from cvaudit.data.ingest_dataset import _unit
    want = int.from_bytes(hashlib.sha256(b"split\x003\x00abc").digest()[:8], "big") / 2.0 ** 64
    assert _unit("split", 3, "abc") == want and 0 <= want < 1
    assert _unit("split", 3, "abc") != _unit("split", 4, "abc") != _unit("rank", 3, "abc")


def test_a_split_is_test_below_the_test_share_then_val_then_train():
    from cvaudit.data.ingest_dataset import _unit
    keys = [f"{k:064x}" for k in range(400)]
    for k in keys:
        u = _unit("split", 1, k)
        want = "test" if u < 0.2 else "val" if u < 0.3 else "train"
        assert hashed_split(k, 1, 0.1, 0.2) == want
    assert {hashed_split(k, 1, 0.0, 0.0) for k in keys} == {"train"}
    assert {hashed_split(k, 1, 0.0, 1.0) for k in keys} == {"test"}
    assert {hashed_split(k, 1, 1.0, 0.0) for k in keys} == {"val"}


def _rows(*splits):
    return [{"key": f"{i:064x}", "split": s} for i, s in enumerate(splits)]


def test_a_tiny_class_gets_its_lowest_hashing_train_image_moved_into_each_empty_share():
    from cvaudit.data.ingest_dataset import _ensure_each_split, _unit
    rows = _rows("train", "train", "train", "train")
    _ensure_each_split(rows, 5, 0.2, 0.2)
    ranked = sorted(range(4), key=lambda i: _unit("split", 5, rows[i]["key"]))
    assert rows[ranked[0]]["split"] == "test" and rows[ranked[1]]["split"] == "val"  # test first, then val
    assert [rows[i]["split"] for i in ranked[2:]] == ["train", "train"]
    rows = _rows("train", "test", "train")
    _ensure_each_split(rows, 5, 0.0, 0.2)  # test already has one; val's share is 0: nothing moves
    assert [r["split"] for r in rows] == ["train", "test", "train"]
    one = _rows("train")
    _ensure_each_split(one, 5, 0.1, 0.2)  # the last train image stays in train
    assert one[0]["split"] == "train"
    half = _rows("train")
    _ensure_each_split(half, 5, 0.0, 0.5)  # half the data for testing still leaves a class its one train image
    assert half[0]["split"] == "train"
    shared = _rows("train")
    _ensure_each_split(shared, 5, 0.5, 0.5)  # val and test take everything: nothing is left to train on anyway
    assert shared[0]["split"] == "test"
    all_held_out = _rows("train")
    _ensure_each_split(all_held_out, 5, 0.0, 1.0)  # unless the shares leave nothing for training
    assert all_held_out[0]["split"] == "test"
    two = _rows("train", "train")
    _ensure_each_split(two, 5, 0.3, 0.3)  # two images: one goes to test, the last stays in train
    assert sorted(r["split"] for r in two) == ["test", "train"]
    val_only = _rows("train", "val", "train")
    _ensure_each_split(val_only, 5, 0.5, 0.0)
    assert [r["split"] for r in val_only] == ["train", "val", "train"]


def test_duplicates_keep_one_copy_preferring_a_held_out_split_and_conflicts_reject_every_copy():
    from cvaudit.data.ingest_dataset import _dedupe
    from cvaudit.data.sources import Candidate
    c = [Candidate("b/x.png", "b", "train"), Candidate("b/y.png", "b", "test"), Candidate("b/z.png", "b", None),
         Candidate("a/1.png", "a"), Candidate("c/1.png", "c"),
         Candidate("d/1.png", "d", where="line 2"), Candidate("d/1.png", "d", where="line 9"),
         Candidate(None, "e", index=4), Candidate(None, "e", index=7),
         Candidate("f/ok.png", "f"), Candidate("g/bad.png", "g")]
    digests = ["x", "x", "x", "k", "k", "d", "d", "e", "e", "f", None]
    keep, rejected = _dedupe(c, digests)
    assert keep == [1, 5, 7, 9]  # the test copy of x; the first listing of d; the first array image; f alone
    why = {(r["path"], r["label"]): r["reason"] for r in rejected}
    assert why[("b/x.png", "b")] == "duplicate of b/y.png (the same content): kept once"
    assert why[("b/z.png", "b")] == "duplicate of b/y.png (the same content): kept once"
    conflict = ("conflicting labels: the same image is labelled 'a' (a/1.png), 'c' (c/1.png); "
                "fix the label, then keep one copy")
    assert why[("a/1.png", "a")] == conflict and why[("c/1.png", "c")] == conflict
    assert why[("d/1.png", "d")] == "the same file listed again (line 2): kept once"
    assert why[("e #7", "e")] == "duplicate of e #4 (the same content): kept once"
    assert len(rejected) == 6 and ("g/bad.png", "g") not in why  # unreadable files are listed elsewhere


def test_a_conflict_names_where_each_copy_is_listed_and_at_most_six_copies():
    from cvaudit.data.ingest_dataset import _dedupe
    from cvaudit.data.sources import Candidate
    c = [Candidate(f"p{i}.png", "ab"[i % 2], where=f"line {i + 2}") for i in range(8)]
    _, rejected = _dedupe(c, ["same"] * 8)
    assert len(rejected) == 8
    reason = rejected[0]["reason"]
    assert "'a' (p0.png line 2), 'b' (p1.png line 3)" in reason and "p5.png line 7" in reason and "p6.png" not in reason
    same_split = [Candidate("x.png", "a", where="line 2"), Candidate("x.png", "a")]
    _, rej = _dedupe(same_split, ["h", "h"])
    assert rej == [{"path": "x.png", "label": "a", "reason": "the same file listed again (line 2): kept once"}]
    unnamed = [Candidate("x.png", "a"), Candidate("x.png", "a")]
    assert _dedupe(unnamed, ["h", "h"])[1][0]["reason"] == "the same file listed again (above): kept once"


def test_a_manifest_damaged_by_hand_is_refused_with_the_command_that_rebuilds_it(tmp_path, clean_folder):
    """Cut mid-row, or rows deleted: every stage reads the manifest through read_manifest, which refuses it
    instead of auditing part of the data as if it were all."""
    from cvaudit import CvauditError
    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.ingest_dataset import ingest
    ingest({"source": "imagefolder", "path": str(clean_folder)}, "t", 0, tmp_path)
    m = tmp_path / "manifest.csv"
    text = m.read_text()
    n = len(read_manifest(m))
    lines = text.splitlines(keepends=True)
    m.write_text("".join(lines[:n // 2]) + lines[n // 2][:20] + "\n")  # cut in the middle of a row
    with pytest.raises(CvauditError, match=r"manifest.csv is damaged: line \d+ has too few columns; rebuild it: "
                                           r"snakemake --forcerun .*manifest.csv"):
        read_manifest(m)
    m.write_text("".join(lines[:n // 3]))  # whole rows gone
    with pytest.raises(CvauditError, match=rf"{n // 3 - 1} rows where its dataset.json counts {n} images"):
        read_manifest(m)
    m.write_text(text)
    assert len(read_manifest(m)) == n
