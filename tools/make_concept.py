"""Write a TCAV concept folder: ordinary images of every class of an array dataset with a planted dataset's cue
painted on (the mark the model may have learnt), so that the concept differs from ordinary images by the cue alone.

    .venv/bin/python tools/make_concept.py CONFIG PLANTED_DATASET OUT_FOLDER [--per-class 3] [--archive t10k]

The images come from the archive the planted dataset's source names (`--archive`: one of its IDX files), drawn
seeded by the config's seed from the end of that archive, and the cue is painted by cvaudit.data.plant_cue with the
planted dataset's own settings. The demo's concept (config/concepts/corner_square) is this tool's output:

    .venv/bin/python tools/make_concept.py config/demo.yaml fmnist_shortcut config/concepts/corner_square --per-class 6
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cvaudit.config import resolve_paths, validate_config  # noqa: E402
from cvaudit.data.plant_cue import paint_cue  # noqa: E402
from cvaudit.data.sources import read_arrays  # noqa: E402


def concept_images(config: dict, planted: str, per_class: int, archive: str) -> list[tuple[str, Image.Image]]:
    """(file name, image) for `per_class` images of each class, the planted dataset's cue painted on."""
    ds = config["datasets"][planted]
    if ds["source"] != "planted_cue":
        raise SystemExit(f"datasets.{planted} is a {ds['source']} source, not planted_cue: no cue to paint")
    parent = dict(config["datasets"][ds["from"]], files=[archive])
    x, y, names, _ = read_arrays(parent)
    rng = np.random.default_rng(config["seed"])
    out = []
    for c, name in enumerate(names):
        rows = np.flatnonzero(y == c)[-200:]  # the archive's last images: far from those a run samples first
        for i in sorted(rng.choice(rows, size=per_class, replace=False)):
            im = paint_cue(Image.fromarray(x[i], "L"), ds["cue"])
            out.append((f"{c:02d}_{i:05d}.png", im))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("planted")
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=3)
    ap.add_argument("--archive", default="t10k")
    a = ap.parse_args()
    cfg = validate_config(yaml.safe_load(a.config.read_text()))
    resolve_paths(cfg, a.config.parent)
    a.out.mkdir(parents=True, exist_ok=True)
    for f in a.out.glob("*.png"):
        f.unlink()
    images = concept_images(cfg, a.planted, a.per_class, a.archive)
    for name, im in images:
        im.save(a.out / name, optimize=True)
    print(f"{len(images)} images with the cue of datasets.{a.planted} in {a.out}")


if __name__ == "__main__":
    main()
