"""What the embedding search for near duplicates finds, and what it pairs wrongly, for a trained model.

Reads N random Fashion-MNIST training images (Debian's dataset-fashion-mnist) and makes copies of the first 200
as a person might meet them in a test split: re-encoded as JPEG, shrunk and enlarged back, mirrored, shifted,
cropped, brightened, and mirrored + shifted + re-encoded. For each copy it asks the embedding_duplicates
stage's two steps: is the original among the copy's `--neighbors` nearest originals in the model's embedding
(centred cosine), and does the pixel check (mirror and shift, blurred grey images) confirm it; beside it, what
the data audit's pHash + pixel check finds. False pairs: pairs of distinct originals that pass, each original
searched against the others.

    .venv/bin/python tools/bench_embedding_duplicates.py results/cnn_fmnist/model.safetensors [--images 1000]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_duplicates import FMNIST, copy, grey  # noqa: E402

from cvaudit.data.copies import distance  # noqa: E402
from cvaudit.data.data_audit import phash  # noqa: E402
from cvaudit.data.sources import read_idx  # noqa: E402
from cvaudit.represent.embedding_duplicates import compare_side, nearest, thumbnail  # noqa: E402


def shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def crop(a: np.ndarray, f: float) -> np.ndarray:
    n = a.shape[0]
    k = round(n * f)
    o = (n - k) // 2
    return np.asarray(Image.fromarray(a[o:o + k, o:o + k]).resize((n, n), Image.BILINEAR))


COPIES = {"JPEG q60": lambda a: copy(a, 1, 60), "0.8x + q60": lambda a: copy(a, 0.8, 60),
          "mirrored": lambda a: a[:, ::-1].copy(), "shifted 2 px": lambda a: shift(a, 2, 1),
          "cropped 90%": lambda a: crop(a, 0.9), "brighter x1.2": lambda a: np.clip(a * 1.2, 0, 255).astype(np.uint8),
          "mirrored + shifted + q80": lambda a: copy(shift(a[:, ::-1], 1, 1), 1, 80)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a trained model's model.safetensors (e.g. the demo's results/cnn_fmnist/)")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--neighbors", type=int, default=5)
    ap.add_argument("--size", type=int, default=32, help="as the stage: never above the images' own side (28)")
    ap.add_argument("--blur", type=float, default=0.8)
    ap.add_argument("--max-shift", type=float, default=0.15)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.013, 0.015])
    args = ap.parse_args()
    from cvaudit.net.pixel_space import start_stage
    from cvaudit.represent.represent import stream_features

    imgs = read_idx(FMNIST, 3)  # bench_duplicates.FMNIST is the archive itself
    imgs = imgs[np.random.default_rng(1).choice(len(imgs), args.images, replace=False)]
    model, spec, dev = start_stage(args.model, 0, "cpu", 2)
    with tempfile.TemporaryDirectory() as tmp:
        def files(arrays, name):
            paths = []
            for i, a in enumerate(arrays):
                paths.append(f"{tmp}/{name}{i}.png")
                Image.fromarray(a).save(paths[-1])
            return paths
        orig = files(imgs, "o")
        rows = lambda ps: [{"path": p, "label": spec["class_names"][0], "split": "test"} for p in ps]  # noqa: E731
        ref = stream_features(model, rows(orig), spec, dev)["embeddings"]
        side = compare_side(orig, args.size)
        th = np.stack([thumbnail(p, side, args.blur) for p in orig])
        idx, _ = nearest(ref, ref, args.neighbors + 1)  # each original against the others: itself comes first
        cand = idx[:, 1:]
        d = distance(np.repeat(th, args.neighbors, 0), th[cand.ravel()], args.max_shift, blur=args.blur)["distance"]
        print(f"{args.model}: {args.images} distinct images, {args.neighbors} neighbours each, compared at {side} px; false pairs: "
              + ", ".join(f"{int((d <= t).sum())} at {t}" for t in args.thresholds))
        hashes = np.array([phash(np.repeat(a[..., None], 3, -1)) for a in imgs[:200]], np.uint64)
        for name, make in COPIES.items():
            made = [make(a) for a in imgs[:200]]
            paths = files(made, "c")
            emb = stream_features(model, rows(paths), spec, dev)["embeddings"]
            near, _ = nearest(emb, ref, args.neighbors)
            inside = (near == np.arange(200)[:, None]).any(1)
            ct = np.stack([thumbnail(p, side, args.blur) for p in paths])
            diff = distance(ct, th[:200], args.max_shift, blur=args.blur)["distance"]
            h = np.array([phash(np.repeat(a[..., None], 3, -1)) for a in made], np.uint64)
            by_hash = (np.bitwise_count(h ^ hashes) <= 8) & (np.abs(np.stack([grey(a) for a in made])
                                                                    - np.stack([grey(a) for a in imgs[:200]])).mean((1, 2)) <= 0.02)
            print(f"  {name:26s} pHash + pixels {by_hash.mean():4.0%} | in the {args.neighbors} nearest {inside.mean():4.0%}, "
                  "confirmed " + ", ".join(f"{np.mean(inside & (diff <= t)):4.0%} at {t}" for t in args.thresholds)
                  + f" | either (at {args.thresholds[1]}) {np.mean(by_hash | (inside & (diff <= args.thresholds[1]))):4.0%}")


if __name__ == "__main__":
    main()
