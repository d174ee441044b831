"""The image_properties stage: a few properties of every test image, computed once per dataset for the
slices stage of each of its models ("plotting performance as a function of image attributes", CS231n).

brightness: mean luminance (ITU-R 601) in [0, 1]; contrast: RMS contrast (standard deviation of the
luminance); sharpness: variance of the luminance's Laplacian (scipy.ndimage, in [0, 1] pixel units);
colourfulness: Hasler & Suesstrunk's M (0 for grey images, about 100 for highly colourful ones, on the
0-255 scale); width, height, aspect (width / height): the file as a person sees it (after EXIF
orientation; ingestion's); grey: every pixel's channels within 2 of 255 of each other.
Images are read as every stage reads them (images.load_rgb) and streamed one at a time (forked workers
for large test splits).
"""
from __future__ import annotations

import csv
import logging
import multiprocessing
import sys
import time

import numpy as np

from cvaudit.core.files import atomic_path
from cvaudit.core.images import load_rgb
from cvaudit.core.manifest import read_manifest

log = logging.getLogger("cvaudit.data.image_properties")

PROPERTIES = {
    "brightness": "mean luminance (0 black, 1 white)",
    "contrast": "RMS contrast (standard deviation of luminance)",
    "sharpness": "variance of the Laplacian of luminance (blurry images score low)",
    "colourfulness": "Hasler-Suesstrunk colourfulness (0 for grey)",
    "width": "width in pixels as a person sees the file",
    "height": "height in pixels as a person sees the file",
    "aspect": "width / height",
    "grey": "1 for a grey image (all channels equal), 0 for colour",
}
CATEGORICAL = ("grey",)
GREY_TOLERANCE = 2  # channel differences (0-255) a grey image may show after JPEG or colour conversion


def properties_of(rgb: np.ndarray) -> dict:
    """The properties of one 8-bit RGB image (H, W, 3) that need its pixels."""
    from scipy.ndimage import laplace
    x = rgb.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    lum = (0.299 * r + 0.587 * g + 0.114 * b) / 255
    rg, yb = r - g, 0.5 * (r + g) - b
    colourful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    spread = max(np.abs(r - g).max(), np.abs(g - b).max(), np.abs(r - b).max()) if rgb.size else 0
    return {"brightness": float(lum.mean()), "contrast": float(lum.std()), "sharpness": float(laplace(lum).var()),
            "colourfulness": float(colourful), "grey": int(spread <= GREY_TOLERANCE)}


def _row(r: dict) -> dict:
    w, h = int(r["width"]), int(r["height"])
    return {"path": r["path"], **properties_of(np.asarray(load_rgb(r["path"]))), "width": w, "height": h,
            "aspect": w / h if h else float("nan")}


def compute_properties(manifest, out, workers: int = 1, split: str = "test") -> int:
    """Write properties.csv (one row per image of `split`, in manifest order). Returns the row count."""
    from tqdm import tqdm

    t0 = time.time()
    rows = read_manifest(manifest, split)
    bar = tqdm(total=len(rows), desc="image properties", file=sys.stderr, mininterval=5, unit="img")
    columns = ["path", *PROPERTIES]
    pool = None
    if workers > 1 and len(rows) >= 2000 and "fork" in multiprocessing.get_all_start_methods():
        pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        results = pool.imap(_row, rows, chunksize=64) if pool else map(_row, rows)
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for row in results:
                w.writerow(row)
                bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.close()
    log.info("properties of %d %s images (%.1fs)", len(rows), split, time.time() - t0)
    return len(rows)


def read_properties(path) -> dict[str, np.ndarray]:
    """{column: array} of a properties.csv (path as strings, the rest as floats)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {"path": np.array([r["path"] for r in rows], dtype=object)}
    for k in PROPERTIES:
        out[k] = np.array([float(r[k]) for r in rows], dtype=np.float64)
    return out
