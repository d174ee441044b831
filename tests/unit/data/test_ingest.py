"""Ingestion that holds up: a split that stays put, duplicates that never leak across splits, a split
the user already has, and a content fingerprint that reruns ingestion when, and only when, the data change."""
import csv
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvaudit import CvauditError
from cvaudit.core.manifest import read_manifest
from cvaudit.data.fingerprint import write_fingerprint
from cvaudit.data.ingest_dataset import ingest

from conftest import TINY


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
    # content replaced with its size and modification time put back: seen all the same
    target = root / "a" / "img002.png"
    before = target.stat()
    other = (root / "b" / "img002.png").read_bytes()
    same_size = other[:before.st_size].ljust(before.st_size, b"\0")
    target.write_bytes(same_size)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    assert stamp()[0] != changed[0]


def test_the_hash_cache_reads_only_new_or_touched_files(tmp_path, monkeypatch):
    import cvaudit.data.fingerprint as fp
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


def _every_file(root: Path) -> int:
    """Every entry under root that is not a folder (files, links, FIFOs), links to folders counted once, not
    followed: what a person would count in a file browser."""
    n = 0
    for base, dirs, files in os.walk(root):
        n += len(files) + sum(1 for d in dirs if os.path.islink(os.path.join(base, d)))
    return n


def test_every_file_under_a_folder_is_read_rejected_or_ignored_and_the_three_add_up(tmp_path):
    """A folder of every kind of clutter: nested sub-folders, archive and OS debris (__MACOSX, .DS_Store,
    Thumbs.db, desktop.ini, ._ resource forks), a text file, a file outside any class folder, upper-case
    extensions, a FIFO, a link to /dev/zero named like an image, a link to a folder. Nothing hangs, no debris
    becomes a class, and files seen = manifest + rejected + ignored; with recursive: true the nested images
    join their top-level class."""
    root = tmp_path / "imgs"
    _images(root, per_class=6)
    (root / "a" / "2019").mkdir()
    (root / "a" / "2019" / "deep").mkdir()
    for k, sub in enumerate(["2019", "2019/deep"]):
        shutil.copy(root / "b" / "img000.png", root / "a" / sub / f"nested{k}.png")
        other = np.asarray(Image.open(root / "b" / f"img00{k + 1}.png")).copy()
        other[5, 5] = 200 + k  # content of its own
        Image.fromarray(other).save(root / "a" / sub / f"other{k}.PNG")
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._img000.png").write_bytes(b"\x00\x05\x16\x07")
    for junk in ("a/.DS_Store", "b/Thumbs.db", "b/desktop.ini", "a/._img001.png", ".DS_Store"):
        (root / junk).write_bytes(b"junk")
    (root / "b" / "notes.txt").write_text("labels checked by hand")
    (root / "loose.png").write_bytes((root / "a" / "img002.png").read_bytes())
    upper = np.asarray(Image.open(root / "b" / "img003.png")).copy()
    upper[6, 6] = 7
    Image.fromarray(upper).save(root / "b" / "UPPER.JPG")
    os.mkfifo(root / "a" / "pipe.png")
    os.symlink("/dev/zero", root / "b" / "zero.png")
    os.symlink(root / "a" / "2019", root / "b" / "linked")
    seen = _every_file(root)
    info = ingest({"source": "imagefolder", "path": str(root)}, "t", 0, tmp_path / "out")
    manifest = read_manifest(tmp_path / "out" / "manifest.csv")
    rejected = list(csv.DictReader(open(tmp_path / "out" / "rejected.csv")))
    assert info["classes"] == ["a", "b"]  # __MACOSX is no class
    assert len(manifest) + len(rejected) + info["n_ignored_system_files"] == seen
    assert info["n_ignored_system_files"] == 6
    reasons = {Path(r["path"]).name: r["reason"] for r in rejected}
    assert "nested folder (a/2019)" in reasons["nested0.png"] and "recursive: true" in reasons["nested0.png"]
    assert "nested folder (a/2019)" in reasons["nested1.png"]  # deeper still: its top nested folder named
    assert "not a regular file (a named pipe" in reasons["pipe.png"]
    assert "not a regular file (a device)" in reasons["zero.png"]
    assert "not in a class folder" in reasons["loose.png"] and "link to a folder" in reasons["linked"]
    assert "not an image extension" in reasons["notes.txt"]
    assert any(Path(r["path"]).name == "UPPER.JPG" for r in manifest)  # an upper-case extension is an image
    os.unlink(root / "b" / "linked")  # through the link the same images would carry class b too: conflicting labels
    again = ingest({"source": "imagefolder", "path": str(root), "recursive": True}, "t", 0, tmp_path / "out2")
    names = {Path(r["path"]).name: r["label"] for r in read_manifest(tmp_path / "out2" / "manifest.csv")}
    assert names["other0.PNG"] == names["other1.PNG"] == "a"  # nested images in their top-level class
    rejected2 = list(csv.DictReader(open(tmp_path / "out2" / "rejected.csv")))
    assert len(read_manifest(tmp_path / "out2" / "manifest.csv")) + len(rejected2) + again["n_ignored_system_files"] \
        == seen - 1
    assert not any("nested folder" in r["reason"] for r in rejected2)


def test_planning_never_reads_a_device_or_a_fifo(tmp_path):
    """The fingerprint (what `snakemake -n` computes) stats every listed file and hashes only regular ones:
    a link named .png to /dev/zero and a FIFO are not read (either would hang)."""
    root = tmp_path / "imgs"
    _images(root, per_class=4)
    os.mkfifo(root / "a" / "pipe.png")
    os.symlink("/dev/zero", root / "b" / "zero.png")
    import threading
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("d", write_fingerprint(
        {"source": "imagefolder", "path": str(root)}, "t", tmp_path / "fp.json")), daemon=True)
    t.start()
    t.join(30)
    assert "d" in done, "the fingerprint hung on a device or a FIFO"
