"""The robustness sample the invariance and adversarial stages share: a seeded, class-stratified set of
test images as the model sees them, read slice by slice for shards."""
from __future__ import annotations

import numpy as np
import torch

from cvaudit import CvauditError
from cvaudit.core.images import load_rgb
from cvaudit.core.manifest import read_manifest
from cvaudit.net.transforms import display_transform


def robustness_images(manifest, spec: dict, n: int, seed: int, start: int = 0,
                      stop: int | None = None, split: str = "test") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A seeded, class-stratified sample of at most n test images (or images of `split`), as the model sees
    them (uint8, resized to its input size), with targets in the model's class indices. start/stop: only that
    slice of the sample is read (a shard); robustness_sample_size gives the sample's length."""
    rows = [r for r in read_manifest(manifest, split) if r["label"] in spec["class_names"]]
    if not rows and split == "test":
        raise CvauditError("the dataset has no test images; raise config key datasets.*.split.test")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    if len(rows) > n:  # round-robin over classes keeps every class represented
        by_class: dict[str, list[int]] = {}
        for i in order:
            by_class.setdefault(rows[i]["label"], []).append(int(i))
        pick, queues = [], list(by_class.values())
        while len(pick) < n:
            for q in queues:
                if q and len(pick) < n:
                    pick.append(q.pop(0))
        order = np.array(sorted(pick))
    else:
        order = np.arange(len(rows))
    order = order[start:stop]
    show = display_transform(spec)
    index = {c: i for i, c in enumerate(spec["class_names"])}
    x = torch.stack([show(load_rgb(rows[i]["path"])) for i in order]) if len(order) else \
        torch.zeros((0, 3, spec["input_size"], spec["input_size"]), dtype=torch.uint8)
    y = torch.tensor([index[rows[i]["label"]] for i in order], dtype=torch.long)
    return x, y, [rows[i]["path"] for i in order]


def robustness_sample_size(manifest, n: int) -> int:
    return min(n, len(read_manifest(manifest, "test")))


def _slice(n: int, start: int, stop: int | None) -> tuple[int, int]:
    stop = n if stop is None else min(stop, n)
    return min(start, stop), stop
