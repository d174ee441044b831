"""Ingestion: image sources -> validated manifest with a seeded, stratified split; streaming dataset.

Every source becomes image files on disk plus a manifest row per image. Sources that are not
files already (IDX archives, scikit-image's lfw_subset array) are written as PNGs under
results/data/{dataset}/images/, only for the images kept (after max_per_class).
"""
from __future__ import annotations

import csv
import gzip
import os
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import CvauditError
from .images import IMAGE_EXTS, background_rgb, check_image, load_rgb, to_rgb  # noqa: F401 — load_rgb: the readers' import
from .io import atomic_path, sha256_file, write_json

# path: the file every stage reads (a converted copy under results/data/{dataset}/converted/ when the
# original needed one); original: the user's file; converted: what was done to it (empty: nothing).
MANIFEST_COLUMNS = ["path", "label", "split", "sha256", "width", "height", "mode", "original", "converted"]


# ----------------------------------------------------------------------------- class names
def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names that ship with torchvision (unique, so a name is one output)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# ----------------------------------------------------------------------------- sources
def foolbox_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise CvauditError("source 'foolbox_imagenet' needs the foolbox package: run `make setup`")
    return Path(spec.origin).parent / "data"


def _lfw_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise CvauditError("source 'lfw_subset' needs scikit-image: run `make setup`")
    return Path(spec.origin).parent / "data" / "lfw_subset.npy"


def _idx_pairs(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for img in sorted(folder.glob("*-images-idx3-ubyte.gz")):
        lab = img.with_name(img.name.replace("-images-idx3-ubyte.gz", "-labels-idx1-ubyte.gz"))
        if not lab.exists():
            raise CvauditError(f"IDX images file {img} has no labels file {lab.name} beside it")
        pairs.append((img, lab))
    if not pairs:
        raise CvauditError(f"no *-images-idx3-ubyte.gz files in {folder} (config key datasets.*.path); "
                           "for Fashion-MNIST install the Debian package dataset-fashion-mnist")
    return pairs


def source_files(ds: dict) -> list[str]:
    """The files a dataset is read from: the ingest rule's inputs, so any change reruns it."""
    src = ds["source"]
    if src == "imagefolder":
        root = Path(ds["path"])
        if not root.is_dir():
            raise CvauditError(f"dataset folder {root} does not exist (config key datasets.*.path)")
        return sorted(str(p) for p in root.glob("*/*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if src == "csv":
        table = Path(ds["path"])
        if not table.is_file():
            raise CvauditError(f"dataset table {table} does not exist (config key datasets.*.path)")
        files = [str(table)]
        for row in _read_table(table):
            p = _resolve(table, row["path"])
            if p.exists():
                files.append(str(p))
        return files
    if src == "idx":
        return [str(p) for pair in _idx_pairs(Path(ds["path"])) for p in pair]
    if src == "foolbox_imagenet":
        return sorted(str(p) for p in foolbox_dir().glob("imagenet_*.jpg"))
    if src == "lfw_subset":
        return [str(_lfw_file())]
    raise CvauditError(f"unknown dataset source '{src}'")


def _read_table(table: Path) -> list[dict]:
    """The rows of a dataset table: UTF-8, with or without the byte-order mark Excel writes."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise CvauditError(f"{table}: needs a header with columns 'path' and 'label' "
                                   f"(found {reader.fieldnames})")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise CvauditError(f"{table}: not UTF-8 text (byte {e.start}: {e.reason}); save the table as UTF-8 "
                           "(in Excel: CSV UTF-8)") from None
    return [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]  # a short row: empty cells


def _resolve(table: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else table.parent / q


@dataclass
class Candidate:
    path: Path
    label: str


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _candidates(ds: dict, images_dir: Path, rng: np.random.Generator) -> tuple[list[Candidate], list[str]]:
    """Return (candidates, class order). Array sources are written to images_dir as PNGs."""
    src, cap = ds["source"], ds.get("max_per_class")
    if src == "imagefolder":
        root = Path(ds["path"])
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        cands = [Candidate(p, d) for d in classes for p in sorted((root / d).iterdir())
                 if (p.is_file() or p.is_symlink()) and not p.name.startswith(".")]
        return cands, classes
    if src == "csv":
        table = Path(ds["path"])
        cands = [Candidate(_resolve(table, r["path"]), str(r["label"]).strip()) for r in _read_table(table)]
        return cands, sorted({c.label for c in cands if c.label})
    if src == "foolbox_imagenet":
        cats = imagenet_categories()
        cands = []
        for p in sorted(foolbox_dir().glob("imagenet_*.jpg")):
            cands.append(Candidate(p, cats[int(p.stem.rsplit("_", 1)[1])]))
        order = sorted({c.label for c in cands}, key=cats.index)
        return cands, order
    # array sources: choose the kept indices first, then write only those images
    if src == "idx":
        xs, ys = [], []
        for img, lab in _idx_pairs(Path(ds["path"])):
            xs.append(_read_idx(img))
            ys.append(_read_idx(lab))
        x, y = np.concatenate(xs), np.concatenate(ys).astype(int)
        names = ds.get("class_names") or [str(i) for i in range(int(y.max()) + 1)]
        if len(names) <= int(y.max()):
            raise CvauditError(f"config key datasets.*.class_names lists {len(names)} names but the "
                               f"IDX labels go up to {int(y.max())}")
    else:  # lfw_subset: 100 faces then 100 non-faces, 25x25 floats in [0, 1]
        arr = np.load(_lfw_file())
        x = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        y = np.repeat([0, 1], len(arr) // 2)
        names = ["face", "non-face"]
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if cap and len(idx) > cap:
            idx = np.sort(rng.choice(idx, cap, replace=False))
        keep.extend(idx.tolist())
    if images_dir.exists():
        shutil.rmtree(images_dir)
    cands = []
    for i in sorted(keep):
        label = names[y[i]]
        out = images_dir / _safe(label) / f"{i:06d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(out)
        cands.append(Candidate(out, label))
    return cands, [n for k, n in enumerate(names) if k in set(y[keep].tolist())]


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """(train, val, test) counts for a class of n images; every non-zero share gets >= 1 image
    when the class has room for it, and train keeps at least one image unless test+val == 1."""
    n_test = int(round(n * test))
    n_val = int(round(n * val))
    if test > 0 and n_test == 0 and n >= 2:
        n_test = 1
    if val > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    if test + val < 1 and n_test + n_val >= n:
        n_val = max(0, n - n_test - 1)
        if n_test + n_val >= n:
            n_test = n - 1
    return n - n_val - n_test, n_val, n_test


def ingest(ds: dict, name: str, seed: int, out_dir: str | Path, progress=None) -> dict:
    """Build results/data/{name}/: manifest.csv, rejected.csv, dataset.json (and images/ for array sources).

    Corrupt, truncated, empty or non-image files are listed in rejected.csv with the reason; an
    empty class or fewer than two classes is an error naming the source.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    images_dir, converted_dir = out_dir / "images", out_dir / "converted"
    background = background_rgb(ds.get("background", "white"))
    if converted_dir.exists():
        shutil.rmtree(converted_dir)
    cands, classes = _candidates(ds, images_dir, rng)
    images_dir.mkdir(parents=True, exist_ok=True)
    where = ds.get("path", ds["source"])

    by_class: dict[str, list[Candidate]] = {c: [] for c in classes}
    for c in cands:
        by_class.setdefault(c.label, []).append(c)
    cap = ds.get("max_per_class")
    rows, rejected, seen = [], [], {}
    for label, items in by_class.items():
        order = rng.permutation(len(items)) if cap and len(items) > cap else np.arange(len(items))
        kept = []
        for k in order:
            if cap and len(kept) >= cap:
                break
            c = items[int(k)]
            key = os.path.realpath(c.path)  # a file listed twice (a CSV row, a link) is one image
            if key in seen:
                rejected.append({"path": str(c.path), "label": label,
                                 "reason": f"the same file as {seen[key][0]} (label '{seen[key][1]}'): kept once"})
                continue
            seen[key] = (str(c.path), label)
            info, reason = check_image(c.path) if label else (None, "no label (an empty label cell)")
            if reason:
                rejected.append({"path": str(c.path), "label": label, "reason": reason})
                continue
            digest = sha256_file(c.path)  # the original's bytes: its identity and its split
            path = c.path
            if info["converted"]:  # read once as a person sees it, written as 8-bit RGB for every stage
                path = converted_dir / _safe(label) / f"{c.path.stem}.{digest[:12]}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(c.path) as im:
                    to_rgb(im, background).save(path)
            kept.append({"path": str(path), "label": label, "sha256": digest, "original": str(c.path), **info})
        kept.sort(key=lambda r: r["path"])
        rows.append((label, kept))
        if progress:
            progress(f"{label}: {len(kept)} images, {sum(r['label'] == label for r in rejected)} rejected")

    rows = [(label, kept) for label, kept in rows if label]  # rows without a label are listed as rejected
    empty = [label for label, kept in rows if not kept]
    if empty:
        raise CvauditError(f"dataset '{name}' ({where}): class(es) with no usable image: {', '.join(empty)}. "
                           "Add images or remove the class folder; rejected files are listed with reasons: "
                           + "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:5]))
    if len(rows) < 2:
        raise CvauditError(f"dataset '{name}' ({where}): found {len(rows)} class(es); a classifier audit needs "
                           "at least two (imagefolder layout: path/CLASS_NAME/image.png)")

    split = ds.get("split", {})
    val, test = split.get("val", 0.15), split.get("test", 0.25)
    manifest = []
    for label, kept in rows:
        n_train, n_val, n_test = split_counts(len(kept), val, test)
        perm = rng.permutation(len(kept))
        assign = np.empty(len(kept), dtype=object)
        assign[perm[:n_test]] = "test"
        assign[perm[n_test:n_test + n_val]] = "val"
        assign[perm[n_test + n_val:]] = "train"
        for r, s in zip(kept, assign):
            manifest.append({**r, "split": s})

    with atomic_path(out_dir / "manifest.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for r in manifest:
            w.writerow({k: r[k] for k in MANIFEST_COLUMNS})
    with atomic_path(out_dir / "rejected.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "reason"])
        w.writeheader()
        w.writerows(rejected)
    counts = {label: {s: sum(1 for r in manifest if r["label"] == label and r["split"] == s)
                      for s in ("train", "val", "test")} for label, _ in rows}
    info = {"name": name, "source": ds["source"], "path": ds.get("path"), "classes": [c for c, _ in rows],
            "counts": counts, "n_images": len(manifest), "n_rejected": len(rejected),
            "manifest_sha256": sha256_file(out_dir / "manifest.csv"), "seed": seed,
            "split": {"val": val, "test": test}, "max_per_class": cap, "background": list(background),
            "n_converted": sum(1 for r in manifest if r["converted"])}
    write_json(out_dir / "dataset.json", info)
    return info


# ----------------------------------------------------------------------------- reading back
def read_manifest(path: str | Path, split: str | None = None) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if split is None or r["split"] == split]


def read_dataset_info(manifest_path: str | Path) -> dict:
    return json.loads((Path(manifest_path).parent / "dataset.json").read_text())


class ImageDataset:
    """Streams images of one split from disk: (tensor, class index). Nothing is held in memory."""

    def __init__(self, rows: list[dict], class_names: list[str], transform):
        index = {c: i for i, c in enumerate(class_names)}
        missing = sorted({r["label"] for r in rows} - set(index))
        if missing:
            raise CvauditError(f"labels {missing[:5]} are not among the model's classes; "
                               "a model audited as it is (train: false) must know every dataset label")
        self.rows, self.targets, self.transform = rows, [index[r["label"]] for r in rows], transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.transform(load_rgb(self.rows[i]["path"])), self.targets[i]
