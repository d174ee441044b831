"""What the layers see: penultimate embeddings of the test set (one streamed pass; and of a sample of training
images, for the failure slices' nearest training images), PCA, t-SNE,
k-NN accuracy, silhouette, nearest neighbours, and linear CKA between layers (Kornblith et al.).
scikit-learn does PCA, t-SNE, k-NN and silhouette; linear CKA is a few lines of numpy."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from cvaudit import CvauditError
from cvaudit.core.files import load_npz, save_npz
from cvaudit.core.manifest import read_manifest
from cvaudit.net.features import stream_features
from cvaudit.net.models import Ensemble, _head_name
from cvaudit.net.pixel_space import start_stage
from cvaudit.net.tokens import blocks, patch_embedding, token_layout

log = logging.getLogger("cvaudit.represent.represent")


# ----------------------------------------------------------------------------- CKA
def _centred_gram(x: np.ndarray) -> np.ndarray:
    """H K H for the linear kernel K = X Xᵀ, as (HX)(HX)ᵀ: centring the features costs n·d, not n³."""
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(0)
    return x @ x.T


def _cka(kx: np.ndarray, ky: np.ndarray) -> float:
    norm = np.sqrt((kx * kx).sum() * (ky * ky).sum())
    return float((kx * ky).sum() / norm) if norm > 0 else 0.0


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same n examples (rows): 1 for identical,
    invariant to orthogonal transforms and isotropic scaling, near 0 for unrelated features."""
    return _cka(_centred_gram(x), _centred_gram(y))


def cka_matrix(feats: dict[str, np.ndarray]) -> dict:
    names = list(feats)
    grams = [_centred_gram(feats[n]) for n in names]  # each Gram matrix once
    m = np.eye(len(names))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            m[i, j] = m[j, i] = _cka(grams[i], grams[j])
    return {"layers": names, "matrix": m.tolist()}


def cross_cka(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[list[float]]:
    """Linear CKA between every layer of one model (rows) and every layer of another (columns), on the
    same images: Raghu et al.'s figure comparing a ViT with a CNN layer by layer."""
    ga, gb = [_centred_gram(v) for v in a.values()], [_centred_gram(v) for v in b.values()]
    return [[_cka(x, y) for y in gb] for x in ga]


def layer_uniformity(feats: dict[str, np.ndarray], seed: int, resamples: int = 200) -> dict | None:
    """How alike a model's layers are: the mean linear CKA between different layers (Raghu et al.: a ViT's
    layers are much more alike than a CNN's, whose early and late layers differ), with a 95% bootstrap
    interval over the images. None with fewer than two layers."""
    if len(feats) < 2:
        return None
    n = len(next(iter(feats.values())))
    rng = np.random.default_rng(seed)
    boot = [_mean_off_diagonal(feats, rng.integers(0, n, n)) for _ in range(resamples)]
    return {"mean": _mean_off_diagonal(feats, np.arange(n)), "low": float(np.percentile(boot, 2.5)),
            "high": float(np.percentile(boot, 97.5)), "n": int(n), "layers": len(feats), "resamples": resamples}


def _mean_off_diagonal(feats: dict[str, np.ndarray], idx: np.ndarray) -> float:
    m = np.asarray(cka_matrix({k: v[idx] for k, v in feats.items()})["matrix"])
    return float(m[~np.eye(len(m), dtype=bool)].mean())


def _evenly(feats: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """k of the layers, evenly spaced from the first to the last."""
    names = list(feats)
    keep = sorted({int(round(i * (len(names) - 1) / (k - 1))) for i in range(k)}) if k > 1 else [len(names) - 1]
    return {names[i]: feats[names[i]] for i in keep}


def uniformity_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], seed: int, resamples: int = 200) -> dict:
    """Layer uniformity of `a` minus that of `b` on the same images, with a paired 95% bootstrap interval
    (the same resampled images for both models). The model with more layers is compared on as many of them
    as the other has, evenly spaced from first to last: adjacent layers are more alike, so a mean over more,
    closer layers would be higher by construction."""
    n = min(len(next(iter(a.values()))), len(next(iter(b.values()))))
    k = min(len(a), len(b))
    a, b = {k_: v[:n] for k_, v in _evenly(a, k).items()}, {k_: v[:n] for k_, v in _evenly(b, k).items()}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        boot.append(_mean_off_diagonal(a, idx) - _mean_off_diagonal(b, idx))
    everything = np.arange(n)
    return {"mean": _mean_off_diagonal(a, everything) - _mean_off_diagonal(b, everything),
            "low": float(np.percentile(boot, 2.5)), "high": float(np.percentile(boot, 97.5)), "n": int(n),
            "layers": [list(a), list(b)]}


# ----------------------------------------------------------------------------- embedding space
def pick_layers(model: nn.Module, k: int = 6) -> list[str]:
    """About k modules from early to late: evenly spaced Conv2d/Linear layers, the head excluded; for a
    vision transformer the patch embedding and the blocks' outputs (the residual stream, as Raghu et al.).
    None for an ensemble: its layers are its members' (their reports compare them)."""
    if isinstance(model, Ensemble):
        return []
    head = _head_name(model)
    cands = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != head]
    if token_layout(model) is not None and blocks(model):
        cands = [n for n in [patch_embedding(model)] if n] + blocks(model)
    if len(cands) <= k:
        return cands
    return [cands[int(round(i * (len(cands) - 1) / (k - 1)))] for i in range(k)]


@torch.no_grad()
def embedding_space(emb: np.ndarray, labels: np.ndarray, seed: int, k: int = 5, tsne_max: int = 2000) -> dict:
    """PCA (2-D and explained variance), t-SNE, leave-one-out k-NN accuracy, silhouette, neighbours."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import NearestNeighbors

    n = len(emb)
    z = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    pca = PCA(n_components=min(10, n, z.shape[1]), random_state=seed).fit(z)
    pca2 = pca.transform(z)[:, :2]
    sub = np.arange(n) if n <= tsne_max else np.sort(np.random.default_rng(seed).choice(n, tsne_max, replace=False))
    perplexity = float(min(30, max(2, (len(sub) - 1) // 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z[sub])
    nn_ = NearestNeighbors(n_neighbors=min(k + 1, n)).fit(z)
    _, idx = nn_.kneighbors(z)
    neigh = idx[:, 1:]  # leave one out: the first neighbour is the point itself
    votes = labels[neigh]
    knn_pred = np.array([np.bincount(v).argmax() for v in votes])
    counts = np.bincount(labels)
    scored = counts[labels] > 1  # an image whose class has no other member cannot be retrieved by class
    n_cls = len(np.unique(labels))
    sil = float(silhouette_score(z, labels)) if 1 < n_cls < n and (np.bincount(labels)[labels] > 1).all() else None
    return {"pca": pca2, "explained_variance": pca.explained_variance_ratio_, "tsne": tsne, "tsne_index": sub,
            "knn_accuracy": float((knn_pred == labels)[scored].mean()) if scored.any() else None,
            "silhouette": sil, "neighbours": neigh}


def run_represent(model_path, manifest, options: dict, seed: int, device: str, threads: int, out) -> dict:
    t0 = time.time()
    model, spec, dev = start_stage(model_path, seed, device, threads)
    rows = read_manifest(manifest, "test")
    index = {c: i for i, c in enumerate(spec["class_names"])}
    labels = np.array([index[r["label"]] for r in rows])
    layers = pick_layers(model, options["layers"])
    log.info("embedding %d test images; CKA over %s", len(rows), layers)
    f = stream_features(model, rows, spec, dev, layers, cka_images=min(options["cka_images"], len(rows)))
    space = embedding_space(f["embeddings"], labels, seed, k=options["k"])
    cka = cka_matrix(f["layers"]) if len(f["layers"]) > 1 else {"layers": [], "matrix": []}
    preds = f["probs"].argmax(1)
    meta = {"n": len(rows), "dim": int(f["embeddings"].shape[1]), "knn_accuracy": space["knn_accuracy"],
            "k": options["k"], "silhouette": space["silhouette"],
            "explained_variance": space["explained_variance"].tolist(), "cka": cka,
            "uniformity": layer_uniformity(f["layers"], seed), "transformer": token_layout(model) is not None,
            "seconds": round(time.time() - t0, 2)}
    layer_arrays = {f"layer_{i}": v.astype(np.float32) for i, v in enumerate(f["layers"].values())}
    train = read_manifest(manifest, "train")
    if len(train) > options["train_images"]:  # a seeded sample: the failure slices' nearest training images
        pick = np.random.default_rng(seed).choice(len(train), options["train_images"], replace=False)
        train = [train[i] for i in np.sort(pick)]
    log.info("embedding %d training images", len(train))
    train_emb = stream_features(model, train, spec, dev)["embeddings"] if train else np.zeros((0, meta["dim"]))
    save_npz(out, meta, **layer_arrays, embeddings=f["embeddings"].astype(np.float32), labels=labels, preds=preds,
             pca=space["pca"], tsne=space["tsne"], tsne_index=space["tsne_index"], neighbours=space["neighbours"],
             paths=np.array([r["path"] for r in rows]), train_embeddings=train_emb.astype(np.float32),
             train_paths=np.array([r["path"] for r in train], dtype=str))
    log.info("k-NN accuracy %s, silhouette %s (%.1fs)", meta["knn_accuracy"], meta["silhouette"], meta["seconds"])
    return meta



def compare_representations(paths: dict, seed: int, out, max_images: int = 2000) -> dict:
    """Linear CKA between the penultimate embeddings of models that saw the same test images, and
    how often their predictions agree."""
    from cvaudit.core.files import write_json

    names = list(paths)
    runs = {m: load_npz(paths[m]) for m in names}
    ref = runs[names[0]]["paths"]
    for m in names[1:]:
        if not np.array_equal(runs[m]["paths"], ref):
            raise CvauditError(f"models {names[0]} and {m} were embedded on different test images; "
                             "rerun their represent jobs")
    n = len(ref)
    sub = np.arange(n) if n <= max_images else np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
    cka = cka_matrix({m: runs[m]["embeddings"][sub] for m in names})
    preds = {m: runs[m]["preds"] for m in names}
    agree = [[float((preds[a] == preds[b]).mean()) for b in names] for a in names]
    result = {"models": names, "n_images": int(len(sub)), "cka": cka["matrix"], "prediction_agreement": agree,
              "knn_accuracy": {m: runs[m]["meta"]["knn_accuracy"] for m in names},
              "dim": {m: runs[m]["meta"]["dim"] for m in names}, **layer_comparison(runs, seed)}
    write_json(out, result)
    log.info("CKA between %s on %d images: %s", names, len(sub), np.round(cka["matrix"], 3).tolist())
    return result


def _layers(run: dict) -> dict[str, np.ndarray]:
    names = (run["meta"].get("cka") or {}).get("layers", [])
    return {n: run[f"layer_{i}"] for i, n in enumerate(names) if f"layer_{i}" in run}


def layer_comparison(runs: dict, seed: int) -> dict:
    """Each model's layer uniformity, and for every pair of models one of which is a transformer, linear CKA
    between all their layers on the CKA images they share (the first cka_images test images, the same for
    every model of a dataset)."""
    names = list(runs)
    feats = {m: _layers(runs[m]) for m in names}
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ta, tb = runs[a]["meta"].get("transformer"), runs[b]["meta"].get("transformer")
            if not (ta or tb) or len(feats[a]) < 2 or len(feats[b]) < 2:
                continue
            a_, b_ = (a, b) if ta else (b, a)  # the transformer's layers down the rows
            n = min(len(next(iter(feats[a_].values()))), len(next(iter(feats[b_].values()))))
            pairs.append({"rows": a_, "columns": b_, "n_images": int(n), "row_layers": list(feats[a_]),
                          "column_layers": list(feats[b_]),
                          "matrix": cross_cka({k: v[:n] for k, v in feats[a_].items()},
                                              {k: v[:n] for k, v in feats[b_].items()}),
                          "uniformity_difference": uniformity_difference(feats[a_], feats[b_], seed)})
    return {"uniformity": {m: runs[m]["meta"].get("uniformity") for m in names},
            "transformer": {m: bool(runs[m]["meta"].get("transformer")) for m in names}, "layer_pairs": pairs}
