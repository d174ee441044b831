"""The own-data quick start, timed: about 200 photos in 3 classes, EfficientNet-Lite0 at 224 px, audit.preset: quick.

    .venv/bin/python tools/bench_quick.py WORKDIR [--per-class 70]

Writes WORKDIR/images/{brick,grass,gravel}/*.png (random crops, flips and rotations of scikit-image's
512 x 512 texture photos, resized to 224 px; seeded), WORKDIR/my.yaml (the README's minimal config plus
the quick preset), runs snakemake there as the README says, and prints its wall time beside the estimate
it printed before the first job (tools/bench_estimate.py then compares per stage).
"""
import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def photos(root: Path, per_class: int, seed: int = 0) -> None:
    import skimage.data
    rng = np.random.default_rng(seed)
    for name in ("brick", "grass", "gravel"):
        src = getattr(skimage.data, name)()
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.integers(160, 400))
            y, x = rng.integers(0, 512 - side, 2)
            crop = np.rot90(src[y:y + side, x:x + side], int(rng.integers(4)))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            Image.fromarray(np.ascontiguousarray(crop)).convert("RGB").resize((224, 224)).save(root / name / f"{i:03d}.png")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--per-class", type=int, default=70)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    photos(a.work / "images", a.per_class)
    (a.work / "my.yaml").write_text(
        "datasets:\n  textures: {source: imagefolder, path: images, split: {val: 0.15, test: 0.25}}\n"
        "models:\n  lite0_textures:\n    dataset: textures\n    arch: timm:tf_efficientnet_lite0\n"
        "    weights: packaged:efficientnet_lite0\n    input_size: 224\naudit: {preset: quick}\n")
    t0 = time.time()
    p = subprocess.run([str(REPO / ".venv" / "bin" / "snakemake"), "-s", str(REPO / "Snakefile"), "--cores", "all",
                        "--configfile", "my.yaml"], cwd=a.work, capture_output=True, text=True)
    wall = time.time() - t0
    (a.work / "run.stderr").write_text(p.stderr)
    said = re.search(r"estimated run time about (.*?) on .*?\((.*?) of job time", p.stderr)
    print(f"exit {p.returncode}; wall {wall:.0f} s; estimate printed: {said[1] if said else '-'} "
          f"(job time {said[2] if said else '-'})")


if __name__ == "__main__":
    sys.exit(main())
