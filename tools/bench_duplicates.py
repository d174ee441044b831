"""What the data audit's near-duplicate check finds, and what it pairs wrongly, at a few pixel thresholds.

Reads N random Fashion-MNIST training images (Debian's dataset-fashion-mnist), counts the pairs of distinct
images that pass both checks (pHash within --bits and the mean absolute pixel difference of the 16 x 16 grey
images within the threshold), and the share of copies found: each of the first 200 images shrunk by a scale
and enlarged back (bilinear), then re-encoded as JPEG at a quality.

    .venv/bin/python tools/bench_duplicates.py [--images 1000] [--bits 8]
"""
import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from cvaudit.data.data_audit import phash  # noqa: E402
from cvaudit.data.sources import read_idx  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
COPIES = ((1.0, 60), (0.9, 85), (0.8, 60), (0.75, 40))  # (scale, JPEG quality)


def grey(a: np.ndarray, n: int = 16) -> np.ndarray:
    return np.asarray(Image.fromarray(a).convert("L").resize((n, n), Image.BILINEAR), np.float32) / 255


def copy(a: np.ndarray, scale: float, quality: int) -> np.ndarray:
    im = Image.fromarray(a)
    if scale != 1:
        w, h = im.size
        im = im.resize((round(w * scale), round(h * scale)), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.025, 0.03])
    args = ap.parse_args()
    imgs = read_idx(FMNIST, 3)
    imgs = imgs[np.random.default_rng(1).choice(len(imgs), args.images, replace=False)]
    rgb = lambda a: np.repeat(a[..., None], 3, -1)  # noqa: E731
    hashes = np.array([phash(rgb(a)) for a in imgs], dtype=np.uint64)
    pixels = np.array([grey(a) for a in imgs])
    dist = np.bitwise_count(hashes[:, None] ^ hashes[None])
    np.fill_diagonal(dist, 99)
    copies = {(s, q): [(np.bitwise_count(np.uint64(phash(rgb(a))) ^ np.uint64(phash(rgb(c)))),
                        np.abs(grey(a) - grey(c)).mean()) for a in imgs[:200] for c in [copy(a, s, q)]]
              for s, q in COPIES}
    for t in args.thresholds:
        false = sum(int((np.abs(pixels[js] - pixels[i]).mean((1, 2)) <= t).sum())
                    for i in range(len(imgs)) for js in [np.flatnonzero(dist[i, i + 1:] <= args.bits) + i + 1])
        found = {f"{s:g}x q{q}": np.mean([d <= args.bits and m <= t for d, m in v]) for (s, q), v in copies.items()}
        print(f"max_pixel_difference {t}: {false} false pairs among {len(imgs)} distinct images; copies found: "
              + ", ".join(f"{k} {v:.0%}" for k, v in found.items()))


if __name__ == "__main__":
    main()
