"""The manifest every stage reads (results/data/{dataset}/manifest.csv, written by the ingest_dataset stage):
its rows, its classes, and the one image loader that streams a split from disk."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from cvaudit import CvauditError
from cvaudit.core.images import load_rgb

# path: the file every stage reads (a converted copy under results/data/{dataset}/converted/ when the
# original needed one); original: the user's file; converted: what was done to it (empty: nothing).
MANIFEST_COLUMNS = ["path", "label", "split", "sha256", "width", "height", "mode", "original", "converted", "groups"]


def read_manifest(path: str | Path, split: str | None = None) -> list[dict]:
    """The manifest's rows (of `split`, when given). A manifest damaged after it was written (a row cut short or
    run on, fewer rows than its dataset.json counts) is refused, naming the command that rebuilds it: a report
    on part of the data would look complete."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rebuild = f"rebuild it: snakemake --forcerun {path}"
    for k, r in enumerate(rows):
        if None in r or any(v is None for v in r.values()):
            raise CvauditError(f"{path} is damaged: line {k + 2} has {'too many' if None in r else 'too few'} "
                               f"columns; {rebuild}")
    info = Path(path).parent / "dataset.json"
    if info.exists():
        try:
            expected = json.loads(info.read_text()).get("n_images")
        except ValueError:
            raise CvauditError(f"{info} is damaged (not JSON); {rebuild}") from None
        if expected is not None and expected != len(rows):
            raise CvauditError(f"{path} is damaged: {len(rows)} rows where its dataset.json counts {expected} "
                               f"images; {rebuild}")
    return [r for r in rows if split is None or r["split"] == split]


def group_values(path: str | Path, paths: list[str], groups: list[str]) -> dict:
    """Each declared group column's value (datasets.*.groups) for the test images `paths`, as text ("" where the
    image has none): {column: object array aligned with paths}."""
    import numpy as np
    if not groups:
        return {}
    by_path = {r["path"]: json.loads(r.get("groups") or "{}") for r in read_manifest(path, "test")}
    return {g: np.array([str(by_path.get(p, {}).get(g, "")) for p in paths], dtype=object) for g in groups}


def manifest_classes(path: str | Path) -> list[str]:
    """The dataset's classes in their order, from the manifest itself (written class by class)."""
    return list(dict.fromkeys(r["label"] for r in read_manifest(path)))


def read_dataset_info(manifest_path: str | Path) -> dict:
    return json.loads((Path(manifest_path).parent / "dataset.json").read_text())


class ImageDataset:
    """Streams images of one split from disk: (tensor, class index). Nothing is held in memory."""

    def __init__(self, rows: list[dict], class_names: list[str], transform):
        index = {c: i for i, c in enumerate(class_names)}
        missing = sorted({r["label"] for r in rows} - set(index))
        if missing:
            raise CvauditError(f"labels {missing[:5]} are not among the model's classes; "
                               "a model audited as it is (train: false) must know every dataset label")
        self.rows, self.targets, self.transform = rows, [index[r["label"]] for r in rows], transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.transform(load_rgb(self.rows[i]["path"])), self.targets[i]


def loader_workers(device) -> int:
    """Image-decoding worker processes for a stage on `device`: none on a CPU (the job's threads already
    run the model, and decoding in the main process keeps its results bit-identical to the tests'); on a
    GPU, up to 4 (the cores left beside the main process), so that decoding does not starve it."""
    import os
    if str(device).startswith("cuda"):
        return max(0, min(4, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1) - 1))
    return 0


def image_loader(rows: list[dict], class_names: list[str], transform, batch_size: int, device,
                 shuffle: bool = False, seed: int | None = None):
    """The one DataLoader of every stage that streams images from disk: on a GPU with decoding workers and
    pinned memory (batches are copied with non_blocking=True), on a CPU in the main process. seed: the
    loader's own generator (training); without one, the loader draws its seed from torch's global one."""
    import torch
    from torch.utils.data import DataLoader
    return DataLoader(ImageDataset(rows, class_names, transform), batch_size=batch_size, shuffle=shuffle,
                      generator=None if seed is None else torch.Generator().manual_seed(seed),
                      num_workers=loader_workers(device), pin_memory=str(device).startswith("cuda"))
