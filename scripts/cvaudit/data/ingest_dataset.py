"""The ingest_dataset stage: a dataset source -> validated manifest with a content-hashed, stable split.

Every image is identified by the sha256 of its content. Exact duplicates are kept once (the others
listed in rejected.csv as "duplicate of ..."), and the same content under two labels is rejected
("conflicting labels"). An image's split comes from a hash of its content and the seed, compared
with the configured shares, so duplicates always share a split and adding or removing images never
moves another image; a split the dataset already has (train/val/test folders, a CSV split column)
is kept. max_per_class keeps the images that rank first by another content hash, so it is stable
too. Array sources (IDX archives, lfw_subset) are written as PNGs under results/data/{dataset}/images/,
only for the images kept; files that needed converting are written once under converted/.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from cvaudit import CvauditError
from cvaudit.core.files import atomic_path, sha256_file, write_json
from cvaudit.core.images import background_rgb, check_image, to_rgb
from cvaudit.core.manifest import MANIFEST_COLUMNS
from cvaudit.data.fingerprint import HashCache, content_hashes, ingested_stamp
from cvaudit.data.sources import (
    Candidate,
    candidates,
    folder_classes,
    folder_listing,
    imagenet_categories,
    listing_candidates,
    read_arrays,
)

log = logging.getLogger("cvaudit.data.ingest_dataset")

SPLIT_PREFERENCE = {"test": 0, "val": 1, "train": 2, None: 3}  # a duplicate kept once stays in its held-out split


def _unit(*parts) -> float:
    """A number in [0, 1) drawn from a hash of `parts`: the same content and seed, the same number."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def safe_name(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def hashed_split(digest: str, seed: int, val: float, test: float) -> str:
    """An image's split from its content alone: u < test -> test, u < test + val -> val, else train."""
    u = _unit("split", seed, digest)
    return "test" if u < test else "val" if u < test + val else "train"


def _ensure_each_split(rows: list[dict], seed: int, val: float, test: float) -> None:
    """A class so small that no image hashed into a non-zero share gets its lowest-hashing train image
    moved there (test first), as long as one train image is left. Only such tiny classes ever see a
    split depend on another image."""
    for share, name in ((test, "test"), (val, "val")):
        train = [r for r in rows if r["split"] == "train"]
        if share > 0 and not any(r["split"] == name for r in rows) and (len(train) >= 2 or val + test >= 1):
            if train:
                min(train, key=lambda r: _unit("split", seed, r["key"]))["split"] = name


def _dedupe(cands: list[Candidate], digests: list[str | None]) -> tuple[list[int], list[dict]]:
    """(indices kept, rejected rows): one image per content; the same content under two labels is rejected."""
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        if d is not None:
            groups.setdefault(d, []).append(i)
    keep, rejected = set(), []

    def name(i):
        c = cands[i]
        return c.path if c.path else f"{c.label} #{c.index}"

    for idx in groups.values():
        if len(idx) == 1:
            keep.add(idx[0])
            continue
        labels = sorted({cands[i].label for i in idx})
        if len(labels) > 1:
            listing = ", ".join(f"'{cands[i].label}' ({name(i)}{' ' + cands[i].where if cands[i].where else ''})"
                                for i in idx[:6])
            for i in idx:
                rejected.append({"path": name(i), "label": cands[i].label,
                                 "reason": f"conflicting labels: the same image is labelled {listing}; "
                                           "fix the label, then keep one copy"})
            continue
        first = min(idx, key=lambda i: (SPLIT_PREFERENCE[cands[i].split], name(i)))
        keep.add(first)
        for i in idx:
            if i == first:
                continue
            same = cands[i].path is not None and cands[i].path == cands[first].path
            what = (f"the same file listed again ({cands[first].where or 'above'})" if same
                    else f"duplicate of {name(first)} (the same content)")
            rejected.append({"path": name(i), "label": cands[i].label, "reason": f"{what}: kept once"})
    return sorted(keep), rejected


def _check_chunk(paths: list[str]) -> list[tuple[dict | None, str | None]]:
    return [check_image(Path(p)) for p in paths]


def _check_all(paths: list[str], pool) -> list[tuple[dict | None, str | None]]:
    """check_image on each path; in worker processes when there are many (opening an image is mostly
    Python, so threads would wait on each other)."""
    if pool is None or len(paths) < 2000:
        return _check_chunk(paths)
    step = max(500, min(5000, len(paths) // 16))
    return [r for chunk in pool.map(_check_chunk, [paths[i:i + step] for i in range(0, len(paths), step)]) for r in chunk]


def ingest(ds: dict, name: str, seed: int, out_dir: str | Path, progress=None, workers: int = 2,
           fingerprint: str | Path | None = None) -> dict:
    """Build results/data/{name}/: manifest.csv, rejected.csv, dataset.json (and images/ for array sources).

    Corrupt, truncated, empty or non-image files, duplicates and conflicting labels are listed in
    rejected.csv with the reason; an empty class or fewer than two classes is an error naming the source.
    """
    out_dir = Path(out_dir)
    images_dir, converted_dir = out_dir / "images", out_dir / "converted"
    background = background_rgb(ds.get("background", "white"))
    for d in (images_dir, converted_dir):
        if d.exists():
            shutil.rmtree(d)
    images_dir.mkdir(parents=True, exist_ok=True)
    where = ds.get("path", ds["source"])
    arrays = read_arrays(ds) if ds["source"] in ("idx", "lfw_subset") else None
    ignored = 0
    if ds["source"] == "imagefolder":  # every file under the folder: read, rejected unread, or system debris
        listing = folder_listing(ds["path"], ds.get("recursive", False))
        cands, ignored = listing_candidates(listing), listing["ignored"]
        if ignored:
            log.info("dataset '%s': %d system file(s) ignored (dot-files, __MACOSX, .DS_Store, Thumbs.db, desktop.ini)",
                     name, ignored)
    else:
        cands = candidates(ds, arrays)
    rejected = [{"path": c.path, "label": c.label, "reason": c.reason} for c in cands if c.reason]  # refused unread
    n_seen = len(cands)
    cands = [c for c in cands if not c.reason]
    if arrays is not None:
        digests = [hashlib.sha256(arrays[0][c.index].tobytes()).hexdigest() for c in cands]
    else:
        hashes = content_hashes([c.path for c in cands], HashCache(out_dir / "hashes.sqlite"), progress=f"dataset '{name}'")
        digests = [hashes[c.path] for c in cands]

    for c, d in zip(cands, digests):  # unreadable files: check_image says why
        if d is None:
            rejected.append({"path": c.path, "label": c.label, "reason": check_image(Path(c.path))[1] or "cannot be read"})
    labelled = [d if c.label else None for c, d in zip(cands, digests)]
    for c, d in zip(cands, digests):
        if d is not None and not c.label:
            rejected.append({"path": c.path, "label": "", "reason": f"{c.where + ': ' if c.where else ''}no label "
                                                                    "(an empty label cell); add it or remove the row"})
    kept_idx, dup_rejected = _dedupe(cands, labelled)
    rejected += dup_rejected
    n_duplicates = sum(1 for r in dup_rejected if not r["reason"].startswith("conflicting"))
    n_conflicting = len(dup_rejected) - n_duplicates

    present = {c.label for c in cands if c.label}
    if arrays is not None:
        classes = [n for n in arrays[2] if n in present]
    elif ds["source"] == "foolbox_imagenet":
        classes = sorted(present, key=imagenet_categories().index)
    elif ds["source"] == "imagefolder":  # every class folder, an empty one too (an error below)
        classes = folder_classes(ds["path"])
    else:
        classes = sorted(present)
    by_class: dict[str, list[int]] = {c: [] for c in classes}
    for i in kept_idx:
        by_class[cands[i].label].append(i)

    cap = ds.get("max_per_class")
    split_cfg = ds.get("split", {})
    val, test = split_cfg.get("val", 0.15), split_cfg.get("test", 0.25)
    bar = tqdm(total=sum(min(len(v), cap or len(v)) for v in by_class.values()), desc=f"checking {name}",
               file=sys.stderr, mininterval=5, unit="img")
    manifest = []
    pool = None  # forked workers: the ingest job imports no torch and runs no threads of its own
    if workers > 1 and len(kept_idx) >= 2000 and arrays is None and "fork" in multiprocessing.get_all_start_methods():
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    for label, idx in by_class.items():
        idx.sort(key=lambda i: _unit("keep", seed, digests[i]) if cap else (cands[i].path or "", cands[i].index))
        kept, pos = [], 0
        while pos < len(idx) and (not cap or len(kept) < cap):  # check in rank order until the class is full
            batch = idx[pos:pos + (cap - len(kept) if cap else len(idx))]
            pos += len(batch)
            if arrays is not None:
                h, w = arrays[0].shape[1:3]
                checks = [({"width": w, "height": h, "mode": "L", "converted": ""}, None)] * len(batch)
            else:
                checks = _check_all([cands[i].path for i in batch], pool)
            bar.update(len(batch))
            for i, (info, reason) in zip(batch, checks):
                c = cands[i]
                if reason:
                    rejected.append({"path": c.path, "label": label, "reason": reason})
                    continue
                kept.append({"label": label, "key": digests[i], "user_split": c.split, "cand": c, **info})
        for r in kept:
            r["split"] = r["user_split"] or hashed_split(r["key"], seed, val, test)
        if not any(r["user_split"] for r in kept):
            _ensure_each_split(kept, seed, val, test)
        for r in kept:
            c = r.pop("cand")
            r["groups"] = json.dumps(c.groups, sort_keys=True) if c.groups else ""
            if arrays is not None:  # written only now, for the images kept
                path = images_dir / safe_name(label) / f"{c.index:06d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arrays[0][c.index]).save(path)
                r.update(path=str(path), original=c.where, sha256=sha256_file(path))
            else:
                path = c.path
                if r["converted"]:  # read once as a person sees it, written as 8-bit RGB for every stage
                    path = converted_dir / safe_name(label) / f"{Path(c.path).stem}.{r['key'][:12]}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with Image.open(c.path) as im:
                        to_rgb(im, background).save(path)
                r.update(path=str(path), original=c.path, sha256=r["key"])
        kept.sort(key=lambda r: r["path"])
        manifest.append((label, kept))
        if progress:
            progress(f"{label}: {len(kept)} images")
    bar.close()
    if pool is not None:
        pool.shutdown()

    empty = [label for label, kept in manifest if not kept]
    if empty:
        raise CvauditError(f"dataset '{name}' ({where}): class(es) with no usable image: {', '.join(empty)}. "
                           "Add images or remove the class folder; rejected files are listed with reasons: "
                           + "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:5]))
    if len(manifest) < 2:
        raise CvauditError(f"dataset '{name}' ({where}): found {len(manifest)} class(es); a classifier audit needs "
                           "at least two (imagefolder layout: path/CLASS_NAME/image.png)")
    rows = [r for _, kept in manifest for r in kept]
    rejected.sort(key=lambda r: not r["reason"].startswith("conflicting"))  # the ones that question labels first
    with atomic_path(out_dir / "manifest.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in MANIFEST_COLUMNS})
    with atomic_path(out_dir / "rejected.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "reason"])
        w.writeheader()
        w.writerows(rejected)
    counts = {label: {s: sum(1 for r in kept if r["split"] == s) for s in ("train", "val", "test")}
              for label, kept in manifest}
    n_user = sum(1 for r in rows if r["user_split"])
    info = {"name": name, "source": ds["source"], "path": ds.get("path"), "classes": [c for c, _ in manifest],
            "counts": counts, "n_images": len(rows), "n_rejected": len(rejected), "n_ignored_system_files": ignored,
            "n_over_max_per_class": n_seen - len(rows) - len(rejected) if arrays is None else None,
            "n_duplicates": n_duplicates, "n_conflicting": n_conflicting,
            "manifest_sha256": sha256_file(out_dir / "manifest.csv"), "seed": seed,
            "split": {"val": val, "test": test},
            "split_from": "the dataset's own split" if n_user == len(rows) else
                          "content hash" if n_user == 0 else f"the dataset's own split ({n_user} images), else content hash",
            "max_per_class": cap, "background": list(background), "groups": list(ds.get("groups") or []),
            "n_converted": sum(1 for r in rows if r["converted"]),
            "source_fingerprint": ingested_stamp(fingerprint)}
    write_json(out_dir / "dataset.json", info)
    return info
