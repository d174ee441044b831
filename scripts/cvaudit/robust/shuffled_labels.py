"""The shuffled-label test (the shuffled_labels rule): Zhang et al. 2017, "Understanding deep learning
requires rethinking generalization". Not to be confused with the parameter-randomisation sanity check
of attributions (cvaudit.explain.trust, Adebayo et al.), which randomises a trained model's weights."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cvaudit import CvauditError
from cvaudit.core.files import write_json
from cvaudit.core.manifest import ImageDataset, manifest_classes, read_manifest
from cvaudit.model.train_model import make_spec
from cvaudit.net.models import build_model, normalisation, resolve_device
from cvaudit.net.pixel_space import seed_everything
from cvaudit.net.transforms import eval_transform

log = logging.getLogger("cvaudit.robust.shuffled_labels")


def memorisation_curves(model_cfg: dict, rows: list[dict], classes: list[str], epochs: int, lr: float,
                        batch_size: int, seed: int, device) -> dict:
    """Zhang et al.'s shuffled-label test: the same architecture and weights trained on the true labels
    and on labels shuffled among the training images (same images, same class counts, no
    augmentation), all layers at `lr` with Adam. Training accuracy per epoch for both: a network
    that fits the shuffled labels can memorise, so its accuracy on real data says nothing by itself
    about what it learned."""
    from torch.utils.data import TensorDataset

    spec = make_spec({**model_cfg, "train": {}}, classes)
    index = {c: i for i, c in enumerate(classes)}
    true = torch.tensor([index[r["label"]] for r in rows])
    shuffled = true[torch.randperm(len(true), generator=torch.Generator().manual_seed(seed))]
    curves = {}
    x = None
    for name, labels in (("true", true), ("shuffled", shuffled)):
        torch.manual_seed(seed)
        model = build_model(spec)
        spec["mean"], spec["std"] = normalisation(spec, model)
        if x is None:  # decoded once, shared by both runs
            x = torch.stack([t for t, _ in ImageDataset(rows, classes, eval_transform(spec))])
        model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        dl = DataLoader(TensorDataset(x, labels), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
        accs = []
        for _ in range(epochs):
            model.train()
            for m in model.modules():  # pretrained BatchNorm keeps its statistics, as in train_model
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and spec["weights"] != "none":
                    m.eval()
            for xb, yb in dl:
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                pred = torch.cat([model(x[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, len(x), 256)])
            accs.append(float((pred == labels).float().mean()))
            log.info("shuffled-label test, %s labels: epoch %d train accuracy %.3f", name, len(accs), accs[-1])
        curves[name] = accs
    return {"epochs": list(range(1, epochs + 1)), "train_accuracy": curves, "n": len(rows),
            "chance": float(np.bincount(true.numpy()).max() / len(true))}


def run_shuffled_labels(name: str, model_cfg: dict, manifest, options: dict, seed: int, device: str, threads: int,
                     out) -> dict:
    t0 = time.time()
    seed_everything(seed, threads)
    dev = resolve_device(device)
    classes = manifest_classes(manifest)
    rows = read_manifest(manifest, "train")
    if len(rows) > options["max_images"]:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), options["max_images"], replace=False))
        rows = [rows[i] for i in keep]
    if not rows:
        raise CvauditError(f"model '{name}': no training images for the shuffled-label test")
    res = memorisation_curves(model_cfg, rows, classes, options["epochs"], options["lr"],
                              options["batch_size"], seed, dev)
    res.update(model=name, seconds=round(time.time() - t0, 2))
    write_json(out, res)
    return res
