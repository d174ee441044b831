"""The copy check as a person would judge it (cvaudit.data.copies): a brightened, re-contrasted, rotated, cropped,
mirrored or re-encoded copy of a real image is within the threshold of its original; distinct real images of one
kind are not; and the data audit finds a planted copy of each kind that the perceptual hash misses."""
import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from cvaudit.data.copies import candidates, distance, thumbnail

from conftest import FMNIST

pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")
THRESHOLD = 0.0108  # the schema's default data_audit.copies.max_distance


def _garments(n=120, seed=3):
    from cvaudit.data.sources import read_idx
    imgs = read_idx(FMNIST / "train-images-idx3-ubyte.gz", 3)
    pick = np.random.default_rng(seed).choice(len(imgs), n, replace=False)
    return [Image.fromarray(imgs[i]).convert("RGB") for i in pick]


def _jpeg(im, q):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


KINDS = {
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "flatter": lambda im: ImageEnhance.Contrast(im).enhance(0.75),
    "mirrored": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
    "rotated 5 degrees": lambda im: im.rotate(5, Image.BILINEAR),
    "rotated 7.5 degrees": lambda im: im.rotate(-7.5, Image.BILINEAR),  # between the grid's steps: refined
    "cropped to 90% off centre": lambda im: im.crop((0, 2, 25, 27)).resize(im.size, Image.BILINEAR),
    "JPEG q60": lambda im: _jpeg(im, 60),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_copy_of_each_kind_matches_its_original_and_is_proposed_as_a_candidate(kind):
    originals = _garments(60)
    th = np.stack([thumbnail(im, 28, 0.8) for im in originals])
    cp = np.stack([thumbnail(KINDS[kind](im), 28, 0.8) for im in originals[:20]])
    d = distance(cp, th[:20], blur=0.8)["distance"]
    # x1.2 clips a white garment flat: a fifth of them keep too little texture to tell (tools/bench_copies.py)
    assert (d <= THRESHOLD).mean() >= (0.75 if kind == "brighter" else 0.9), (kind, np.round(np.sort(d), 4))
    cand = candidates(cp, th, 3)
    proposed = {(int(q), int(r)) for q, r in cand}
    assert sum((i, i) in proposed for i in range(20)) >= 18, kind


def _random_crop(im, rng):
    side = round(im.size[0] * rng.uniform(0.85, 0.95))
    x0, y0 = (int(v) for v in rng.integers(0, im.size[0] - side + 1, 2))
    return im.crop((x0, y0, x0 + side, y0 + side)).resize(im.size, Image.BILINEAR)


@pytest.mark.slow
def test_crops_anywhere_are_found_once_the_sharper_thumbnail_is_blurred_to_match():
    """A crop resized back is blurred less than its original zoomed to match it: matched, the crop is found; left
    unmatched, the same crops sit farther from their originals. Symmetric garments correlate about as well with
    the mirror image, so both are refined."""
    rng = np.random.default_rng(5)
    originals = _garments(60, seed=11)
    th = np.stack([thumbnail(im, 28, 0.8) for im in originals])
    cp = np.stack([thumbnail(_random_crop(im, rng), 28, 0.8) for im in originals])
    matched, unmatched = distance(cp, th, blur=0.8)["distance"], distance(cp, th)["distance"]
    assert (matched <= THRESHOLD).mean() >= 0.9, np.round(np.sort(matched), 4)
    assert np.median(matched) < 0.8 * np.median(unmatched)


@pytest.mark.slow
def test_distinct_garments_of_one_cut_are_not_copies():
    """Two trousers of the same cut correlate above 0.99 (their outlines agree); the difference left after fitting
    brightness and contrast tells them apart."""
    originals = _garments(300)
    th = np.stack([thumbnail(im, 28, 0.8) for im in originals])
    pairs = candidates(th, th, 3, exclude_self=True)
    d = distance(th[pairs[:, 0]], th[pairs[:, 1]], blur=0.8)
    assert (d["ncc"] > 0.97).sum() > 0  # correlation alone would pair some of them
    assert int((d["distance"] <= THRESHOLD).sum()) == 0


def test_the_alignment_found_is_the_one_applied():
    im = _garments(1)[0]
    a = thumbnail(im, 28, 0.8)[None]
    b = thumbnail(im.transpose(Image.FLIP_LEFT_RIGHT).rotate(-10, Image.BILINEAR), 28, 0.8)[None]
    r = distance(a, b, blur=0.8)
    assert r["mirror"][0] == 1 and abs(r["rotation"][0]) == 10 and r["distance"][0] <= 0.03
    flat = np.full((1, 28, 28), 0.3, np.float32)
    assert distance(flat, flat)["distance"][0] == 1.0  # too little content to call anything a copy
