"""A planted shortcut: a copy of a dataset in which one class carries a small artificial cue.

Source `planted_cue` (config key datasets.NAME, `from: PARENT`): every image of the parent dataset is
copied with the parent's split. In train and val, images of `cue.class` carry the cue with probability
`cue.rate`, images of other classes with `cue.other_rate`; in test, every image
carries it with probability `cue.test_rate`, whatever its class. A model trained on the copy can learn the
cue instead of the garment: a Clever-Hans predictor whose clean test accuracy still looks plausible. The
draws are seeded (seed and dataset name), so the copy is reproducible. The manifest's groups column says
which images carry the cue (`cue`: marked / clean), so the slices stage can compare the two.

The cue's `kind` gives it a shape a shortcut really takes: `square` (a bright square near a corner, like a
watermark), `line` (a thin line along one edge, like a scanner's or a camera's stripe), `frame` (a thin ring
round the border, like a mount or a vignette) or `brightness` (every pixel brighter: a global cue with no
mark at all, like one hospital's scanner).

`near_duplicates: N` copies N training images, re-encoded as JPEG (quality 60-90), into the test split: a
leakage the data audit must find (their group `planted_duplicate` names the training image).
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cvaudit import CvauditError
from cvaudit.core.files import atomic_path, sha256_file, write_json
from cvaudit.core.images import load_rgb
from cvaudit.core.manifest import MANIFEST_COLUMNS, manifest_classes, read_dataset_info, read_manifest
from cvaudit.data.ingest_dataset import safe_name


def cue_box(width: int, height: int, cue: dict) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the cue's square: `size` of the shorter side (at least 2 px), `margin` from the
    corner's edges."""
    side = max(2, round(cue["size"] * min(width, height)))
    margin = round(cue["margin"] * min(width, height))
    x0 = margin if cue["corner"].endswith("left") else width - margin - side
    y0 = margin if cue["corner"].startswith("top") else height - margin - side
    return x0, y0, x0 + side, y0 + side


def read_8bit(path: str) -> Image.Image:
    """A manifest's image as 8-bit grey (kept grey) or RGB, as every stage reads it (load_rgb)."""
    with Image.open(path) as im:
        if im.mode == "L":
            im.load()
            return im.copy()
    return load_rgb(path)


def cue_mask(width: int, height: int, cue: dict) -> np.ndarray:
    """(height, width) bool: the pixels a mark of `cue.kind` covers (all False for a global cue)."""
    mask = np.zeros((height, width), bool)
    kind = cue.get("kind", "square")
    margin = round(cue["margin"] * min(width, height))
    w = cue.get("width", 1)
    if kind == "square":
        x0, y0, x1, y1 = cue_box(width, height, cue)
        mask[y0:y1, x0:x1] = True
    elif kind == "line":
        edge = cue.get("edge", "top")
        lo, hi = (margin, margin + w) if edge in ("top", "left") else (-(margin + w), -margin or None)
        if edge in ("top", "bottom"):
            mask[lo:hi, :] = True
        else:
            mask[:, lo:hi] = True
    elif kind == "frame":
        mask[margin:height - margin, margin:width - margin] = True
        mask[margin + w:height - margin - w, margin + w:width - margin - w] = False
    return mask


def paint_cue(im: Image.Image, cue: dict) -> Image.Image:
    """A copy of an 8-bit grey or RGB image with the cue painted on: a mark at grey level `value` (0..1), or
    for `brightness` every pixel raised by `offset`."""
    a = np.asarray(im).copy()
    if cue.get("kind", "square") == "brightness":
        a = np.clip(a.astype(np.int16) + round(cue["offset"] * 255), 0, 255).astype(np.uint8)
    else:
        a[cue_mask(im.width, im.height, cue)] = round(cue["value"] * 255)
    return Image.fromarray(a, im.mode)


def near_copy(im: Image.Image, quality: int) -> Image.Image:
    """A near duplicate of an 8-bit grey or RGB image: re-encoded as JPEG at `quality` (a re-saved copy)."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as j:
        return j.convert(im.mode)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def plant(ds: dict, name: str, parent_manifest: str | Path, seed: int, out_dir: str | Path, progress=None) -> dict:
    """Write results/data/{name}/ (manifest.csv, rejected.csv, dataset.json, images/) from the parent's manifest."""
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True)
    cue = ds["cue"]
    classes = manifest_classes(parent_manifest)
    if cue["class"] not in classes:
        raise CvauditError(f"config key 'datasets.{name}.cue.class': '{cue['class']}' is not a class of dataset "
                           f"'{ds['from']}' (its classes: {', '.join(classes)})")
    parent_info = read_dataset_info(parent_manifest)
    offered = [*parent_info.get("groups", []), "cue"]
    if unknown := [g for g in ds.get("groups") or [] if g not in offered]:
        raise CvauditError(f"config key 'datasets.{name}.groups': {', '.join(unknown)} not offered; a planted_cue "
                           f"dataset offers its parent's groups and 'cue' ({', '.join(offered)})")
    rows = read_manifest(parent_manifest)
    rng = _rng(seed, name)
    draws = rng.random(len(rows))
    rate = {s: (cue["test_rate"] if s == "test" else None) for s in ("train", "val", "test")}
    manifest, marked = [], {c: {s: 0 for s in ("train", "val", "test")} for c in classes}
    for i, (r, u) in enumerate(zip(rows, draws)):
        p = rate[r["split"]]
        if p is None:
            p = cue["rate"] if r["label"] == cue["class"] else cue["other_rate"]
        im = read_8bit(r["path"])
        mark = bool(u < p)
        if mark:
            im = paint_cue(im, cue)
            marked[r["label"]][r["split"]] += 1
        groups = {**(json.loads(r["groups"]) if r["groups"] else {}), "cue": "marked" if mark else "clean"}
        manifest.append(_write(im, images_dir, r, f"{i:07d}", groups))
        if progress and (i + 1) % 5000 == 0:
            progress(f"{name}: {i + 1} of {len(rows)} images copied")

    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    n_dup = min(ds["near_duplicates"], len(train))
    planted = []
    for k, i in enumerate(sorted(rng.choice(train, size=n_dup, replace=False).tolist()) if n_dup else []):
        # the copy as the model sees it in train (cue and all)
        dup = near_copy(read_8bit(manifest[i]["path"]), quality=60 + 10 * (k % 4))
        src = manifest[i]
        groups = {**json.loads(src["groups"]), "planted_duplicate": src["path"]}
        manifest.append(_write(dup, images_dir, {**rows[i], "split": "test"}, f"dup{k:04d}", groups))
        planted.append({"train": src["path"], "test": manifest[-1]["path"]})

    with atomic_path(out_dir / "manifest.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(manifest)
    with atomic_path(out_dir / "rejected.csv") as tmp, open(tmp, "w", newline="") as f:
        csv.DictWriter(f, fieldnames=["path", "label", "reason"]).writeheader()
    counts = {c: {s: sum(1 for r in manifest if r["label"] == c and r["split"] == s) for s in ("train", "val", "test")}
              for c in classes}
    info = {"name": name, "source": "planted_cue", "path": None, "from": ds["from"], "classes": classes,
            "counts": counts, "n_images": len(manifest), "n_rejected": 0, "n_duplicates": 0, "n_conflicting": 0,
            "manifest_sha256": sha256_file(out_dir / "manifest.csv"), "seed": seed,
            "split": parent_info.get("split"), "split_from": f"dataset '{ds['from']}' (the parent's split)",
            "max_per_class": parent_info.get("max_per_class"), "background": parent_info.get("background"),
            "groups": list(ds.get("groups") or []), "n_converted": 0, "source_fingerprint": None,
            "cue": {**cue, "box_at_28px": list(cue_box(28, 28, cue)) if cue.get("kind", "square") == "square" else None}, "marked": marked,
            "planted_duplicates": planted}
    write_json(out_dir / "dataset.json", info)
    return info


def _write(im: Image.Image, images_dir: Path, row: dict, stem: str, groups: dict) -> dict:
    path = images_dir / safe_name(row["label"]) / f"{stem}.png"
    path.parent.mkdir(exist_ok=True)
    im.save(path)
    return {"path": str(path), "label": row["label"], "split": row["split"], "sha256": sha256_file(path),
            "width": im.width, "height": im.height, "mode": im.mode, "original": row["path"], "converted": "",
            "groups": json.dumps(groups, sort_keys=True)}
