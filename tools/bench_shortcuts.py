"""Does the Clever-Hans stage catch shortcuts of several kinds, and leave their clean twins alone?

For each cue kind (a corner square, a thin line along an edge, a thin frame, a brightness offset; the planted_cue
source, seeded), a small CNN is trained on Fashion-MNIST with the cue on most of one class's training images, and
its clean twin on the same images without it (the demo's recipe, fewer images). The Clever-Hans stage runs on each
with the given settings (the defaults unless --set), and the verdict shortcut_suspected is printed beside what
the stage tested. Trained models are cached in the work folder.

    .venv/bin/python tools/bench_shortcuts.py [--work /tmp/shortcuts] [--kinds square line frame brightness]
        [--per-class 200] [--set max_area=0.35 --set max_object=0.6]

Needs Debian's dataset-fashion-mnist. About a minute per model on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cvaudit.config import validate_config  # noqa: E402
from cvaudit.data.ingest_dataset import ingest  # noqa: E402
from cvaudit.data.plant_cue import plant  # noqa: E402
from cvaudit.explain.clever_hans import run_clever_hans  # noqa: E402
from cvaudit.model.train_model import train_model  # noqa: E402
from cvaudit.report.judge import judge  # noqa: E402
from cvaudit.report.shortcut_checks import shortcut_suspected  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
KINDS = {"square": {}, "line": {"kind": "line", "edge": "top", "width": 1},
         "frame": {"kind": "frame", "width": 1}, "brightness": {"kind": "brightness", "offset": 0.25},
         "clean": None}


def config(per_class: int, kinds: list[str], cls: str, epochs: int, test_rate: float) -> dict:
    datasets = {"f": {"source": "idx", "path": FMNIST, "max_per_class": per_class, "class_names": NAMES,
                      "split": {"val": 0.15, "test": 0.25}}}
    for k in kinds:
        if KINDS[k] is not None:
            datasets[f"f_{k}"] = {"source": "planted_cue", "from": "f",
                                  "cue": {"class": cls, "rate": 0.9, "test_rate": test_rate, **KINDS[k]}}
    model = {"arch": "simple_cnn", "arch_options": {"channels": [32, 64, 128], "dropout": 0.1}, "weights": "none",
             "input_size": 28, "train": {"head_epochs": epochs, "finetune_epochs": epochs, "patience": 5, "lr": 0.002,
                                         "augment": {"hflip": 0.5, "translate": 0.05}}}
    models = {f"m_{k}": {**model, "dataset": "f" if KINDS[k] is None else f"f_{k}"} for k in kinds}
    return validate_config({"datasets": datasets, "models": models})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/cvaudit-shortcuts")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=8, help="head and finetune epochs each")
    ap.add_argument("--cls", default="Shirt")
    ap.add_argument("--test-rate", type=float, default=0.1, help="share of test images (any class) carrying the cue")
    ap.add_argument("--set", action="append", default=[], help="clever_hans option=value (YAML value)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    kinds = list(dict.fromkeys(["clean", *args.kinds]))
    cfg = config(args.per_class, kinds, args.cls, args.epochs, args.test_rate)
    options = dict(cfg["clever_hans"])
    for kv in args.set:
        k, v = kv.split("=", 1)
        options[k] = yaml.safe_load(v)
    if not (work / "f" / "manifest.csv").exists():
        ingest(cfg["datasets"]["f"], "f", cfg["seed"], work / "f")
    rows = []
    for k in kinds:
        d = "f" if KINDS[k] is None else f"f_{k}"
        if not (work / d / "manifest.csv").exists():
            plant(cfg["datasets"][d], d, work / "f" / "manifest.csv", cfg["seed"], work / d)
        m = f"m_{k}"
        mdir = work / m
        if not (mdir / "model.safetensors").exists():
            mdir.mkdir(exist_ok=True)
            t = time.time()
            met = train_model(m, cfg["models"][m], work / d / "manifest.csv", cfg["seed"], "cpu", 2,
                              mdir / "model.safetensors", mdir / "history.csv", mdir / "metrics.json")
            print(f"{m}: trained in {time.time() - t:.0f} s, test accuracy {met.get('test_accuracy', met.get('val_accuracy'))}",
                  flush=True)
        t = time.time()
        res = run_clever_hans(mdir / "model.safetensors", work / d / "manifest.csv", options, cfg["seed"], "cpu", 2,
                              mdir / "clever_hans.npz")
        est = shortcut_suspected({"clever_hans": {"meta": res}})
        status = judge(est, cfg["verdicts"]["shortcut_suspected"], False)
        tested = [f"{f['class']}/{f['shape']}: {f['paste']['value']:.2f} vs {f['control_paste']['value']:.2f}"
                  for f in res["flagged"]]
        rows.append({"model": m, "status": status, "value": est["value"] if est else None,
                     "ci": [est["ci_low"], est["ci_high"]] if est else None, "seconds": round(time.time() - t, 1),
                     "tested": tested, "global_suspects": [f"{s['class_index']}:{s['property']}:{s['effect']:.2f}"
                                                           for s in res["global"].get("suspects", [])]})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
