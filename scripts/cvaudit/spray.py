"""Spectral relevance analysis (SpRAy; Lapuschkin et al. 2019, "Unmasking Clever Hans predictors"): the
attribution maps of many images of one class, pooled to a small grid, clustered spectrally; the eigengap
of the affinity graph's Laplacian says how many distinct strategies the model uses for that class.

Each cluster is then described: its mean map, the smallest set of grid cells holding `mass` of that mean
relevance (its region), how much of each member's relevance lies there, and how often the images have
an object there. A cluster is *flagged* when its relevance is concentrated (a small region), the same
across its members, and off the objects' usual area: what a watermark or a corner mark looks like.
scikit-learn's spectral clustering does the clustering; the affinity is the symmetric k-nearest-neighbour
graph of the pooled maps, as in CoRelAy's SpRAy pipeline.
"""
from __future__ import annotations

import numpy as np


def pool_maps(maps: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W) maps -> (N, grid, grid): positive evidence, area-averaged, each summing to 1 (a map with no
    positive evidence becomes uniform)."""
    import torch
    import torch.nn.functional as F

    pos = torch.from_numpy(np.nan_to_num(np.asarray(maps, np.float32))).clamp_min(0)[:, None]
    pooled = F.adaptive_avg_pool2d(pos, grid)[:, 0].double().numpy()
    total = pooled.reshape(len(pooled), -1).sum(1)
    out = np.full_like(pooled, 1.0 / grid**2)
    ok = total > 0
    out[ok] = pooled[ok] / total[ok, None, None]
    return out


def affinity(features: np.ndarray, neighbors: int):
    """The symmetric k-nearest-neighbour graph (binary, sparse) of the rows of `features`."""
    from sklearn.neighbors import kneighbors_graph

    k = max(1, min(neighbors, len(features) - 1))
    a = kneighbors_graph(features, k, mode="connectivity", include_self=False)
    return ((a + a.T) > 0).astype(np.float64)


def eigengap(a, max_clusters: int) -> tuple[int, np.ndarray]:
    """(number of clusters, the smallest eigenvalues of the normalised Laplacian): the k in 1..max_clusters
    after which the eigenvalues jump the most (von Luxburg 2007, section 8.3)."""
    from scipy.linalg import eigh
    from scipy.sparse.csgraph import laplacian

    lap = laplacian(a.toarray() if hasattr(a, "toarray") else a, normed=True)
    m = min(max_clusters + 1, len(lap))
    vals = eigh(lap, eigvals_only=True, subset_by_index=[0, m - 1])
    vals = np.clip(vals, 0, None)
    if m < 2:
        return 1, vals
    return int(np.argmax(np.diff(vals)) + 1), vals


def spray(pooled: np.ndarray, neighbors: int, max_clusters: int, seed: int) -> dict:
    """Cluster one class's pooled maps: {k, labels, eigenvalues}. Clusters are numbered by size, largest first."""
    from sklearn.cluster import SpectralClustering

    n = len(pooled)
    feats = pooled.reshape(n, -1)
    a = affinity(feats, neighbors)
    k, vals = eigengap(a, min(max_clusters, n - 1))
    labels = np.zeros(n, int)
    if k > 1:
        labels = SpectralClustering(n_clusters=k, affinity="precomputed", assign_labels="cluster_qr",
                                    random_state=seed).fit_predict(a)
    sizes = np.bincount(labels, minlength=k)
    rank = np.empty(k, int)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(k)
    return {"k": k, "labels": rank[labels], "eigenvalues": vals.tolist()}


def region_of(mean_map: np.ndarray, mass: float) -> np.ndarray:
    """The smallest set of cells holding at least `mass` of the map (boolean grid)."""
    flat = mean_map.ravel()
    order = np.argsort(-flat, kind="stable")
    need = int(np.searchsorted(np.cumsum(flat[order]), mass * flat.sum() - 1e-12) + 1)
    mask = np.zeros(flat.shape, bool)
    mask[order[:need]] = True
    return mask.reshape(mean_map.shape)


def foreground_frequency(x8: np.ndarray, grid: int, threshold: float = 0.1) -> np.ndarray:
    """How often each grid cell holds part of an object, over images x8 (N, 3, H, W uint8): a pixel is an
    object's where its grey level differs from the image's border (the median of its outermost pixels) by
    more than `threshold`; a cell counts when at least half its pixels do. Photos whose subject fills the
    frame read as object everywhere, so nothing is off-object there (the counterfactual still tests it)."""
    grey = x8.astype(np.float32).mean(1) / 255.0
    border = np.concatenate([grey[:, 0, :], grey[:, -1, :], grey[:, :, 0], grey[:, :, -1]], axis=1)
    fg = np.abs(grey - np.median(border, axis=1)[:, None, None]) > threshold
    import torch
    import torch.nn.functional as F

    cells = F.adaptive_avg_pool2d(torch.from_numpy(fg.astype(np.float32))[:, None], grid)[:, 0].numpy()
    return (cells >= 0.5).mean(0)


def describe(pooled: np.ndarray, labels: np.ndarray, object_freq: np.ndarray, options: dict) -> list[dict]:
    """Each cluster of one class: size, mean map, region and the three tests behind a flag."""
    n = len(pooled)
    out = []
    for c in range(int(labels.max()) + 1 if n else 0):
        members = np.flatnonzero(labels == c)
        mean = pooled[members].mean(0)
        region = region_of(mean, options["mass"])
        share = pooled[members][:, region].sum(1)  # each member's relevance inside the region
        area = float(region.mean())
        obj = float(object_freq[region].mean())
        big = len(members) >= max(options["min_cluster_images"], options["min_cluster_share"] * n)
        concentrated = area <= options["max_area"]
        consistent = float(np.median(share)) >= options["min_member_share"]
        off_object = obj <= options["max_object"]
        out.append({"cluster": c, "size": int(len(members)), "share_of_class": len(members) / n, "members": members,
                    "mean_map": mean, "region": region, "area": area, "member_share": float(np.median(share)),
                    "object_frequency": obj, "big_enough": bool(big), "concentrated": bool(concentrated),
                    "consistent": bool(consistent), "off_object": bool(off_object),
                    "flagged": bool(big and concentrated and consistent and off_object)})
    return out


def box_of(region: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) in pixels of the bounding box of a region's cells (as adaptive pooling cut them)."""
    g = region.shape[0]
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    y0, y1 = (rows.min() * height) // g, -(-(rows.max() + 1) * height // g)
    x0, x1 = (cols.min() * width) // g, -(-(cols.max() + 1) * width // g)
    return int(y0), int(y1), int(x0), int(x1)
