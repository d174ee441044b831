"""Recall per kind of copy and false pairs among distinct images, for the copy check both duplicate searches use
(cvaudit.data.copies: candidates by nearest neighbours of a normalised thumbnail, confirmed by the best normalised
cross-correlation over mirror, rotation, zoom and shift).

N distinct real images (Fashion-MNIST training images, Debian's dataset-fashion-mnist; or --source lfw, scikit-
image's 200 faces); a copy of each of the first 200 per kind (seeded): rotated by 3-10 degrees, cropped to 85-95%
and resized back, brightness x0.8-1.25, contrast x0.7-1.4, mirrored, JPEG quality 40-90, and all of these at once
(mild). A copy is found when its original is among its k candidates and the distance is within the threshold; a
false pair is two distinct images among each other's candidates within the threshold.

    .venv/bin/python tools/bench_copies.py [--images 1000] [--side 32] [--k 5] [--thresholds 0.03 0.05 0.08]
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from cvaudit.data.copies import candidates, distance, thumbnail  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def rotate(im, rng):
    return im.rotate(float(rng.choice([-1, 1]) * rng.uniform(3, 10)), Image.BILINEAR)


def crop(im, rng):
    w, h = im.size
    f = rng.uniform(0.85, 0.95)
    cw, ch = round(w * f), round(h * f)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)


def brightness(im, rng):
    return ImageEnhance.Brightness(im).enhance(float(rng.choice([rng.uniform(0.8, 0.9), rng.uniform(1.1, 1.25)])))


def contrast(im, rng):
    return ImageEnhance.Contrast(im).enhance(float(rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.4)])))


def mirror(im, rng):
    return im.transpose(Image.FLIP_LEFT_RIGHT)


def jpeg(im, rng):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(40, 91)))
    return Image.open(io.BytesIO(buf.getvalue())).convert(im.mode)


def mild_mix(im, rng):
    im = im.rotate(float(rng.uniform(-5, 5)), Image.BILINEAR)
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.9, 1.1)))
    return jpeg(im, rng)


KINDS = {"rotation 3-10 deg": rotate, "crop 85-95%": crop, "brightness x0.8-1.25": brightness,
         "contrast x0.7-1.4": contrast, "mirror": mirror, "JPEG q40-90": jpeg, "rotate+brighten+JPEG": mild_mix}


def images(source: str, n: int) -> list[Image.Image]:
    if source == "lfw":
        from skimage.data import lfw_subset
        faces = (lfw_subset() * 255).astype(np.uint8)
        return [Image.fromarray(f).convert("RGB") for f in faces[:n]]
    from cvaudit.data.sources import read_idx
    imgs = read_idx(FMNIST, 3)
    pick = np.random.default_rng(1).choice(len(imgs), n, replace=False)
    return [Image.fromarray(imgs[i]).convert("RGB") for i in pick]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", choices=["fmnist", "lfw"], default="fmnist")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--copies", type=int, default=200)
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--blur", type=float, default=0.8)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-shift", type=float, default=0.15)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.008, 0.01, 0.012, 0.015, 0.02, 0.025])
    args = ap.parse_args()
    originals = images(args.source, args.images)
    side = min(args.side, min(originals[0].size))
    thumbs = np.stack([thumbnail(im, side, args.blur) for im in originals])
    t0 = time.time()
    pairs = candidates(thumbs, thumbs, args.k, exclude_self=True)
    false = distance(thumbs[pairs[:, 0]], thumbs[pairs[:, 1]], args.max_shift, blur=args.blur)["distance"]
    t_false = time.time() - t0
    rng = np.random.default_rng(0)
    found = {}
    for kind, make in KINDS.items():
        cps = np.stack([thumbnail(make(im, rng), side, args.blur) for im in originals[:args.copies]])
        cand = candidates(cps, thumbs, args.k)
        hit = cand[cand[:, 0] == cand[:, 1]]  # the original among the copy's candidates
        d = np.ones(args.copies)
        d[hit[:, 0]] = distance(cps[hit[:, 0]], thumbs[hit[:, 1]], args.max_shift, blur=args.blur)["distance"]
        found[kind] = (len(hit) / args.copies, d)
    print(f"{args.source}: {args.images} distinct images at {side} px, {len(pairs)} candidate pairs among them "
          f"(k={args.k}; checked in {t_false:.1f} s)")
    print("threshold | false pairs | " + " | ".join(KINDS))
    for t in args.thresholds:
        print(f"{t:.4f} | {int((false <= t).sum())} | " + " | ".join(f"{(d <= t).mean():.0%}" for _, d in found.values()))
    print("proposed (the original among the k candidates): " + ", ".join(f"{k} {v[0]:.0%}" for k, v in found.items()))
    print("closest false pairs: " + ", ".join(f"{v:.4f}" for v in np.sort(false)[:5]))


if __name__ == "__main__":
    main()
