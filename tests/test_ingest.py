"""Ingestion that holds up: a split that stays put, duplicates that never leak across splits, a split
the user already has, and a content fingerprint that reruns ingestion when, and only when, the data change."""
import csv
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from cvaudit import CvauditError
from cvaudit.data import ingest, read_manifest
from cvaudit.fingerprint import write_fingerprint


def _images(root: Path, per_class: int = 30, classes=("a", "b"), seed: int = 0):
    """Distinct small real-looking images: Fashion-MNIST fixture crops with a per-image pixel change."""
    srcs = sorted(TINY.glob("*/fm*.png"))
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            a = np.asarray(Image.open(srcs[k % len(srcs)]).convert("L")).copy()
            a[rng.integers(28), rng.integers(28)] = rng.integers(256)
            a[0, 0], a[0, 1] = k, ord(c[0])  # unique content per image
            Image.fromarray(a).save(root / c / f"img{k:03d}.png")


def _splits(out) -> dict[str, str]:
    return {Path(r["original"]).name + "@" + r["label"]: r["split"] for r in read_manifest(Path(out) / "manifest.csv")}


def _rejected(out) -> dict[str, str]:
    with open(Path(out) / "rejected.csv", newline="") as f:
        return {Path(r["path"]).name + "@" + r["label"]: r["reason"] for r in csv.DictReader(f)}


SPLIT = {"val": 0.2, "test": 0.3}


def test_adding_or_removing_an_image_moves_no_other_image(tmp_path):
    root = tmp_path / "imgs"
    _images(root)
    ds = {"source": "imagefolder", "path": str(root), "split": SPLIT}
    ingest(ds, "d", 7, tmp_path / "o1")
    before = _splits(tmp_path / "o1")
    _images(tmp_path / "extra", per_class=1, seed=5)
    shutil.copy(tmp_path / "extra" / "a" / "img000.png", root / "a" / "new.png")
    (root / "b" / "img003.png").unlink()
    ingest(ds, "d", 7, tmp_path / "o2")
    after = _splits(tmp_path / "o2")
    assert set(after) == set(before) - {"img003.png@b"} | {"new.png@a"}
    moved = [k for k in before if k in after and before[k] != after[k]]
    assert moved == []
    assert {s for s in before.values()} == {"train", "val", "test"}


def test_duplicates_share_one_copy_and_conflicting_labels_are_rejected(tmp_path):
    root = tmp_path / "imgs"
    _images(root, per_class=20)
    for k in range(10):  # the same file twice in its class folder
        shutil.copy(root / "a" / f"img{k:03d}.png", root / "a" / f"copy{k:03d}.png")
    for k in range(5):  # the same bytes under the other label
        shutil.copy(root / "a" / f"img{k + 10:03d}.png", root / "b" / f"mislabelled{k}.png")
    info = ingest({"source": "imagefolder", "path": str(root), "split": SPLIT}, "d", 0, tmp_path / "o")
    rows = read_manifest(tmp_path / "o" / "manifest.csv")
    rejected = _rejected(tmp_path / "o")
    assert len({r["sha256"] for r in rows}) == len(rows) == 35  # a: 20 - 5 conflicting; b: 20
    names = {Path(r["original"]).name for r in rows if r["label"] == "a"}
    for k in range(10):  # one of each pair is kept (the first by name), the other names it
        kept, dup = f"copy{k:03d}.png", f"img{k:03d}.png"
        assert kept in names and dup not in names
        assert rejected[dup + "@a"] == f"duplicate of {root / 'a' / kept} (the same content): kept once"
    for k in range(5):
        why = rejected[f"mislabelled{k}.png@b"]
        assert why.startswith("conflicting labels") and "'a'" in why and "'b'" in why
        assert rejected[f"img{k + 10:03d}.png@a"].startswith("conflicting labels")
    assert (info["n_duplicates"], info["n_conflicting"]) == (10, 10)


def test_a_csv_listing_rows_twice_never_puts_one_file_in_two_splits(tmp_path):
    root = tmp_path / "imgs"
    _images(root, per_class=10)
    files = sorted(root.glob("*/*.png"))
    table = tmp_path / "t.csv"
    table.write_text("path,label\n" + "".join(f"{p.relative_to(tmp_path)},{p.parent.name}\n" for p in files * 2))
    info = ingest({"source": "csv", "path": str(table), "split": SPLIT}, "t", 0, tmp_path / "o")
    rows = read_manifest(tmp_path / "o" / "manifest.csv")
    assert len(rows) == 20 == len({r["original"] for r in rows}) and info["n_duplicates"] == 20
    assert all("listed again (line" in why for why in _rejected(tmp_path / "o").values())


def test_a_users_split_column_is_kept_and_a_duplicate_stays_in_its_held_out_split(tmp_path):
    root = tmp_path / "imgs"
    _images(root, per_class=12)
    files = sorted(root.glob("*/*.png"))
    want = {p.name + "@" + p.parent.name: ["train", "val", "test", "Test", "VALID", ""][k % 6] for k, p in enumerate(files)}
    shutil.copy(files[2], root / "a" / "leak.png")  # the same bytes as a test image, listed as train
    lines = [f"{p.relative_to(tmp_path)},{p.parent.name},{want[p.name + '@' + p.parent.name]}" for p in files]
    lines.insert(0, "imgs/a/leak.png,a,train")
    (tmp_path / "t.csv").write_text("path,label,split\n" + "\n".join(lines) + "\n")
    info = ingest({"source": "csv", "path": str(tmp_path / "t.csv"), "split": SPLIT}, "t", 0, tmp_path / "o")
    got = _splits(tmp_path / "o")
    assert "leak.png@a" not in got and got[files[2].name + "@a"] == "test"
    named = {"train": "train", "val": "val", "test": "test", "Test": "test", "VALID": "val"}
    for k, v in want.items():
        if v:
            assert got[k] == named[v], k
    assert info["split_from"].startswith("the dataset's own split (")  # empty cells: drawn from the content
    (tmp_path / "bad.csv").write_text("path,label,split\nimgs/a/img000.png,a,holdout\n")
    with pytest.raises(CvauditError, match=r"bad.csv line 2: split 'holdout' is not train, val or test"):
        ingest({"source": "csv", "path": str(tmp_path / "bad.csv")}, "t", 0, tmp_path / "o2")


def test_train_val_test_folders_are_honoured(tmp_path):
    root = tmp_path / "imgs"
    for split, n in (("train", 8), ("val", 3), ("test", 4)):
        _images(root / split, per_class=n, seed={"train": 1, "val": 2, "test": 3}[split])
    info = ingest({"source": "imagefolder", "path": str(root), "split": SPLIT}, "d", 0, tmp_path / "o")
    assert info["classes"] == ["a", "b"] and info["split_from"] == "the dataset's own split"
    assert info["counts"] == {c: {"train": 8, "val": 3, "test": 4} for c in ("a", "b")}
    rows = read_manifest(tmp_path / "o" / "manifest.csv")
    assert all(Path(r["path"]).parts[-3] == r["split"] for r in rows)


def test_csv_paths_outside_the_tables_folder_are_refused_unless_allowed(tmp_path):
    _images(tmp_path / "elsewhere", per_class=3)
    (tmp_path / "tables").mkdir()
    table = tmp_path / "tables" / "t.csv"
    table.write_text("path,label\n" + "".join(f"../elsewhere/{c}/img00{k}.png,{c}\n" for c in "ab" for k in range(3)))
    with pytest.raises(CvauditError, match=r"t.csv line 2: path '../elsewhere/a/img000.png' is outside .*allow_outside"):
        ingest({"source": "csv", "path": str(table)}, "t", 0, tmp_path / "o")
    info = ingest({"source": "csv", "path": str(table), "allow_outside": True}, "t", 0, tmp_path / "o")
    assert info["n_images"] == 6


def test_fingerprint_changes_with_content_and_files_never_with_a_touch_or_a_copy(tmp_path):
    root = tmp_path / "imgs"
    _images(root, per_class=5)
    ds = {"source": "imagefolder", "path": str(root)}
    out = tmp_path / "results" / "source.json"

    def stamp():
        write_fingerprint(ds, "d", out)
        return out.read_text(), out.stat().st_mtime_ns

    first = stamp()
    time.sleep(0.02)
    later = time.time() + 100
    for p in root.glob("*/*.png"):
        os.utime(p, (later, later))  # a touch
    assert stamp() == first
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # a restore from backup: new files, new times, the same content
    shutil.rmtree(root)
    copy.rename(root)
    assert stamp() == first
    img = root / "a" / "img001.png"
    img.write_bytes((root / "b" / "img001.png").read_bytes())  # content changes
    changed = stamp()
    assert changed[0] != first[0] and changed[1] > first[1]
    shutil.copy(img, root / "b" / "new.png")  # a new file
    added = stamp()
    assert added[0] != changed[0]
    (root / "b" / "new.png").unlink()  # removed again: the fingerprint of the data before
    assert stamp()[0] == changed[0]


def test_the_hash_cache_reads_only_new_or_touched_files(tmp_path, monkeypatch):
    import cvaudit.fingerprint as fp
    root = tmp_path / "imgs"
    _images(root, per_class=5)
    ds = {"source": "imagefolder", "path": str(root)}
    read = []
    real = fp.sha256_file
    monkeypatch.setattr(fp, "sha256_file", lambda p: read.append(Path(p).name) or real(p))
    write_fingerprint(ds, "d", tmp_path / "r" / "source.json")
    assert len(read) == 10
    read.clear()
    write_fingerprint(ds, "d", tmp_path / "r" / "source.json")
    assert read == []
    later = time.time() + 100
    os.utime(root / "a" / "img002.png", (later, later))
    write_fingerprint(ds, "d", tmp_path / "r" / "source.json")
    assert read == ["img002.png"]
