"""The data_audit stage (one job per dataset): what is wrong with the data before any model is judged on it.

- Near duplicates within and across splits: a perceptual hash (imagehash's pHash, 64 bits) of every image;
  pairs within `max_distance` bits are found through the pigeonhole principle (split the hash into
  max_distance + 1 bands: two hashes that close agree on one band exactly), so the work grows with the
  candidates, not with n²; each candidate is confirmed on the pixels (mean absolute difference of the
  grey images at size x size at most `max_pixel_difference`): on small images a pHash alone pairs distinct
  but similar ones (Fashion-MNIST: 57 false pairs among 300 images at 8 bits, none after the pixel check).
  A test image with a near duplicate in the training or validation split is leaked: every metric on it
  is inflated.
- Label-issue candidates: confident learning (cleanlab) on out-of-sample probabilities of a classic-ML
  classifier (logistic regression on downsampled grey pixels, as the baseline, cross-validated over every
  image), ranked by self-confidence; shown with the given and the suggested label.
- Class balance per split, and image-quality outliers: properties (image_properties.properties_of) more than
  `outlier_z` robust z-scores (median and MAD) from the dataset's, per property.
- Copies a hash misses (brightened, re-contrasted, rotated, cropped, mirrored: cvaudit.data.copies): every test image's
  nearest training and validation thumbnails, confirmed as a person would; they join the near-duplicate pairs and
  the leakage count, and the report says which kinds of copy were searched.
Exact copies never reach here: ingestion keeps one copy of identical files (manifest sha256)."""
from __future__ import annotations

import logging
import time

import numpy as np

from cvaudit.core import progress
from cvaudit.core.files import save_npz
from cvaudit.core.images import load_rgb
from cvaudit.core.labels import label_issues
from cvaudit.core.manifest import read_manifest
from cvaudit.data.image_properties import properties_of

log = logging.getLogger("cvaudit.data.data_audit")
HASH_BITS = 64
QUALITY = ("brightness", "contrast", "sharpness", "aspect")


# ----------------------------------------------------------------------------- near duplicates
def phash(rgb: np.ndarray) -> int:
    """imagehash's 64-bit perceptual hash (DCT of the 32x32 grey image) as an unsigned integer."""
    import imagehash
    from PIL import Image
    bits = imagehash.phash(Image.fromarray(rgb)).hash.ravel()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def near_duplicates(hashes: np.ndarray, max_distance: int, pixels: np.ndarray | None = None,
                    max_difference: float = 1.0) -> np.ndarray:
    """Every pair (i, j, Hamming distance), i < j, of hashes at most `max_distance` bits apart, sorted.
    Candidates come from max_distance + 1 bands of the hash (pigeonhole: a pair that close shares one band),
    then each is checked on the whole hash and, given `pixels` (one row per image, uint8), on the mean
    absolute difference of its two rows in [0, 1] (at most `max_difference`)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n, bands = len(hashes), max_distance + 1
    edges = np.linspace(0, HASH_BITS, bands + 1).astype(int)
    found = [np.zeros((0, 2), np.int64)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        key = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        k = key[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], n]):
            if b - a > 1:  # every pair within the bucket, as arrays
                members = np.sort(order[a:b])
                i, j = np.triu_indices(b - a, 1)
                found.append(np.column_stack([members[i], members[j]]))
    pairs = np.unique(np.concatenate(found), axis=0)
    if not len(pairs):
        return np.zeros((0, 3), np.int64)
    dist = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]).astype(np.int64)
    keep = dist <= max_distance
    if pixels is not None:
        a, b = pixels[pairs[:, 0]].astype(np.float32), pixels[pairs[:, 1]].astype(np.float32)
        keep &= np.abs(a - b).mean(1) / 255 <= max_difference
    return np.column_stack([pairs[keep], dist[keep]])


def leakage(pairs: np.ndarray, splits: np.ndarray) -> dict:
    """Near-duplicate pairs by split pair, and the test images with a near duplicate in train or val (leaked),
    with their share of the test split and its Wilson interval."""
    from cvaudit.core import stats
    by_split: dict[str, int] = {}
    leaked = set()
    for i, j, _ in pairs:
        a, b = sorted((str(splits[i]), str(splits[j])))
        by_split[f"{a}-{b}"] = by_split.get(f"{a}-{b}", 0) + 1
        for t, o in ((i, j), (j, i)):
            if splits[t] == "test" and splits[o] in ("train", "val"):
                leaked.add(int(t))
    n_test = int((np.asarray(splits) == "test").sum())
    return {"pairs": int(len(pairs)), "by_split": by_split, "leaked": sorted(leaked),
            "leaked_share": stats.proportion(len(leaked), n_test)}


# ----------------------------------------------------------------------------- labels
def out_of_sample_probabilities(x: np.ndarray, y: np.ndarray, seed: int, folds: int = 5) -> np.ndarray:
    """Cross-validated class probabilities of the baseline's classifier (standardised pixels, logistic
    regression): every image's from a model that never saw it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = max(2, min(folds, int(np.bincount(y).min())))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.1, random_state=seed))
    return cross_val_predict(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), method="predict_proba")


def label_sample(n: int, cap: int, seed: int) -> np.ndarray:
    """The images the label check reads: all of them, or a seeded sample of `cap` (sorted) when there are more:
    the cross-validated classifier's cost grows with the images."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


# ----------------------------------------------------------------------------- balance and quality
def class_balance(labels: list[str], splits: list[str], classes: list[str]) -> dict:
    counts = {s: {c: 0 for c in classes} for s in ("train", "val", "test")}
    for c, s in zip(labels, splits):
        counts[s][c] += 1
    total = {c: sum(counts[s][c] for s in counts) for c in classes}
    present = [v for v in total.values() if v]
    return {"counts": counts, "total": total, "imbalance": max(present) / min(present) if present else None}


def quality_outliers(props: dict[str, np.ndarray], z: float) -> dict:
    """Per property, the images more than z robust z-scores (|x - median| / (1.4826 MAD)) from the median:
    too dark or bright, flat, blurry or sharp, odd aspect. A property with MAD 0 flags any image that differs."""
    out = {}
    for k in QUALITY:
        v = props[k]
        med = np.median(v)
        mad = 1.4826 * np.median(np.abs(v - med))
        score = np.abs(v - med) / mad if mad > 0 else np.where(np.isclose(v, med), 0.0, np.inf)
        flagged = np.flatnonzero(score > z)
        out[k] = {"index": flagged[np.argsort(-score[flagged], kind="stable")], "median": float(med),
                  "low": int((v[flagged] < med).sum()), "high": int((v[flagged] > med).sum())}
    return out


# ----------------------------------------------------------------------------- the stage
def _read(rows: list[dict], size: int) -> tuple[np.ndarray, dict, np.ndarray]:
    """One read of every image: its pHash, its quality properties and its grey pixels at size x size (uint8:
    256 bytes an image, so a million images hold 256 MB)."""
    from PIL import Image
    hashes = np.empty(len(rows), np.uint64)
    pixels = np.empty((len(rows), size * size), np.uint8)
    props = {k: np.empty(len(rows)) for k in QUALITY}
    for i, r in enumerate(rows):
        im = load_rgb(r["path"])
        rgb = np.asarray(im)
        hashes[i] = phash(rgb)
        p = properties_of(rgb)
        for k in ("brightness", "contrast", "sharpness"):
            props[k][i] = p[k]
        props["aspect"][i] = im.width / im.height
        pixels[i] = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR)).ravel()
    return hashes, props, pixels


def copy_search(rows: list[dict], splits: np.ndarray, options: dict, seed: int) -> dict:
    """Test images that are copies of training or validation images (cvaudit.data.copies): pairs (test, reference) in
    the rows' indices, with the distance and the alignment that matched them."""
    from cvaudit.data import copies
    test = np.flatnonzero(splits == "test")
    ref = np.flatnonzero(np.isin(splits, ["train", "val"]))
    if len(ref) > options["max_reference"]:
        ref = np.sort(np.random.default_rng(seed).choice(ref, options["max_reference"], replace=False))
    empty = {"pairs": np.zeros((0, 2), np.int64), "distance": np.zeros(0, np.float32), "mirror": np.zeros(0, np.int64),
             "rotation": np.zeros(0, np.float32), "scale": np.zeros(0, np.float32), "shift": np.zeros((0, 2), np.int64),
             "side": None, "candidates": 0, "n_test": int(len(test)), "n_reference": int(len(ref))}
    if not len(test) or not len(ref):
        return empty
    side = copies.compare_side([rows[i]["path"] for i in test[:200]], options["side"])
    thumb = lambda i: copies.thumbnail(load_rgb(rows[i]["path"]), side, options["blur"])  # noqa: E731
    log.info("copy search: thumbnails of %d test and %d training/validation images at %d px", len(test), len(ref), side)
    progress.task(f"copy search over {len(test):,} test and {len(ref):,} training/validation images")
    t_test, t_ref = np.stack([thumb(i) for i in test]), np.stack([thumb(i) for i in ref])
    cand = copies.candidates(t_test, t_ref, options["neighbors"])
    log.info("copy search: confirming %d candidate pairs (about 2 ms each on a 2-core CPU)", len(cand))
    d = copies.distance(t_test[cand[:, 0]], t_ref[cand[:, 1]], blur=options["blur"])
    ok = d["distance"] <= options["max_distance"]
    return {**empty, "pairs": np.column_stack([test[cand[ok, 0]], ref[cand[ok, 1]]]).astype(np.int64),
            **{k: d[k][ok] for k in ("distance", "mirror", "rotation", "scale", "shift")}, "side": side,
            "candidates": int(len(cand))}


def run_data_audit(manifest, options: dict, seed: int, out) -> dict:
    t0 = time.time()
    rows = read_manifest(manifest)
    classes = sorted({r["label"] for r in rows})
    y = np.array([classes.index(r["label"]) for r in rows])
    splits = np.array([r["split"] for r in rows])
    log.info("data audit of %d images: hashes, quality, out-of-sample probabilities", len(rows))
    progress.task(f"hashing and measuring {len(rows):,} images")
    hashes, props, pixels = _read(rows, options["size"])
    pairs = near_duplicates(hashes, options["max_distance"], pixels, options["max_pixel_difference"])
    n_hash = len(pairs)
    copied = copy_search(rows, splits, options["copies"], seed) if options["copies"]["enabled"] else None
    if copied is not None and len(copied["pairs"]):
        known = {(int(i), int(j)) for i, j, _ in pairs}
        extra = [(min(i, j), max(i, j)) for i, j in copied["pairs"].tolist() if (min(i, j), max(i, j)) not in known]
        if extra:
            e = np.array(sorted(set(extra)), np.int64)
            dist = np.bitwise_count(hashes[e[:, 0]] ^ hashes[e[:, 1]]).astype(np.int64)
            pairs = np.concatenate([pairs, np.column_stack([e, dist])])
        log.info("copy search: %d candidates, %d confirmed (%d the hash missed)", copied["candidates"],
                 len(copied["pairs"]), len(extra))
    leak = leakage(pairs, splits)
    progress.task("label issues: out-of-sample probabilities")
    issues, checked = None, label_sample(len(rows), options["max_label_images"], seed)
    if len(classes) > 1 and np.bincount(y[checked], minlength=len(classes)).min() >= 2:
        x = pixels[checked].astype(np.float32) / 255
        found = label_issues(out_of_sample_probabilities(x, y[checked], seed, options["folds"]), y[checked])
        issues = {**found, "index": checked[found["index"]]}  # back to the dataset's own indices
    outliers = quality_outliers(props, options["outlier_z"])
    meta = {"n": len(rows), "classes": classes, "balance": class_balance([r["label"] for r in rows], list(splits), classes),
            "duplicates": {k: leak[k] for k in ("pairs", "by_split", "leaked_share")}, "leaked": len(leak["leaked"]),
            "max_distance": options["max_distance"], "hash_pairs": n_hash,
            "copies": None if copied is None else {
                "searched": ["JPEG re-encoding", "brightness", "contrast", "mirror", "rotation up to 10 degrees",
                             "crop to 85% and resized back", "shift"],
                "not_searched": ["rotation beyond 10 degrees", "crops below 85%", "colour changes", "overlays and text",
                                 "copies within a split"],
                **{k: copied[k] for k in ("side", "candidates", "n_test", "n_reference")}, "pairs": int(len(copied["pairs"])),
                "max_distance": options["copies"]["max_distance"]},
            "label_issues": None if issues is None else len(issues["index"]), "label_images": int(len(checked)),
            "outliers": {k: {"count": len(v["index"]), "low": v["low"], "high": v["high"], "median": v["median"]}
                         for k, v in outliers.items()},
            "options": options, "seconds": round(time.time() - t0, 2)}
    arrays = {"paths": np.array([r["path"] for r in rows]), "labels": y, "splits": splits, "pairs": pairs,
              "leaked": np.array(leak["leaked"], np.int64), "hashes": hashes.view(np.int64)}
    if copied is not None:
        arrays.update({f"copy_{k}": copied[k] for k in ("pairs", "distance", "mirror", "rotation", "scale", "shift")})
    if issues is not None:
        arrays.update({f"issue_{k}": v for k, v in issues.items()})
    arrays.update({f"outlier_{k}": v["index"] for k, v in outliers.items()})
    save_npz(out, meta, **arrays)
    log.info("data audit: %d near-duplicate pairs (%d test images leaked), %s label-issue candidates (%.1fs)",
             len(pairs), len(leak["leaked"]), meta["label_issues"], meta["seconds"])
    return meta
