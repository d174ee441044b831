"""The fit_baseline stage: the classic-ML baseline of a dataset (logistic regression on downsampled grey
pixels), trained on the same split as the models; its per-image results make the models' gain over it
a paired comparison (cvaudit.model.evaluate_model.baseline_gain)."""
from __future__ import annotations

import time

import numpy as np

from cvaudit.core.files import write_json
from cvaudit.core.manifest import read_manifest


def _pixels(rows, size: int) -> np.ndarray:
    from PIL import Image
    out = np.empty((len(rows), size * size), np.float32)
    for i, r in enumerate(rows):
        with Image.open(r["path"]) as im:
            out[i] = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), np.float32).ravel() / 255
    return out


def fit_baseline(manifest, size: int, max_train: int, seed: int, out) -> dict:
    """Logistic regression on downsampled grey pixels, trained on the same split as the models."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    train, test = read_manifest(manifest, "train"), read_manifest(manifest, "test")
    res = {"name": f"logistic regression on {size}x{size} grey pixels", "available": False}
    if len({r["label"] for r in train}) < 2 or not test:
        res["reason"] = "the dataset has no training split with two classes (all images are test images)"
        write_json(out, res)
        return res
    rng = np.random.default_rng(seed)
    if len(train) > max_train:
        train = [train[i] for i in sorted(rng.choice(len(train), max_train, replace=False))]
    x_tr, x_te = _pixels(train, size), _pixels(test, size)
    y_tr, y_te = [r["label"] for r in train], [r["label"] for r in test]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.1, random_state=seed))
    clf.fit(x_tr, y_tr)
    correct = clf.predict(x_te) == np.array(y_te)
    res.update(available=True, accuracy=float(np.mean(correct)), n_train=len(train), n_test=len(test),
               correct=correct.astype(int).tolist(),  # per test image, in manifest order: paired tests
               seconds=round(time.time() - t0, 2))
    write_json(out, res)
    return res
