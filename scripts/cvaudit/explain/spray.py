"""Spectral relevance analysis (SpRAy; Lapuschkin et al. 2019, "Unmasking Clever Hans predictors"): the
attribution maps of many images of one class, pooled to a small grid, clustered spectrally; the eigengap
of the affinity graph's Laplacian says how many distinct strategies the model uses for that class.

Each cluster is then described by candidate regions, the shapes a shortcut takes: the smallest set of grid
cells holding `mass` of its mean relevance (a *compact* region: a watermark, a corner mark), each edge's
outermost strip of cells (a line along an edge) and the border ring (a frame). For each: its area, how much of
each member's relevance lies there, how much more than the images of the other classes put there (the
*enrichment*), and how often the images have an object there. A compact region is *flagged* when it is
small, holds the same share across the members, and lies off the objects' usual area; a strip or the ring
when the members put a large and enriched share of their relevance there, off the objects. A flag is a
suspicion for the counterfactual test (cvaudit.explain.clever_hans), not a verdict.
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


def structures(grid: int) -> dict[str, np.ndarray]:
    """The thin shapes a shortcut takes along the image's edges, as boolean grids: each edge's outermost strip
    (one cell wide on grids up to 8, an eighth of the grid beyond) and the border ring of the same width."""
    w = max(1, grid // 8)
    out = {name: np.zeros((grid, grid), bool) for name in ("top edge", "bottom edge", "left edge", "right edge")}
    out["top edge"][:w], out["bottom edge"][-w:] = True, True
    out["left edge"][:, :w], out["right edge"][:, -w:] = True, True
    out["border"] = np.ones((grid, grid), bool)
    out["border"][w:-w, w:-w] = False
    return out


def _candidate(shape: str, region: np.ndarray, pooled_members: np.ndarray, reference: np.ndarray,
               object_freq: np.ndarray) -> dict:
    share = pooled_members[:, region].sum(1)  # each member's relevance inside the region
    ref = float(reference[region].sum())
    member_share = float(np.median(share))
    return {"shape": shape, "region": region, "area": float(region.mean()), "member_share": member_share,
            "reference_share": ref, "enrichment": member_share / ref if ref > 0 else float("inf"),
            "object_frequency": float(object_freq[region].mean())}


def describe(pooled: np.ndarray, labels: np.ndarray, object_freq: np.ndarray, options: dict,
             reference: np.ndarray | None = None) -> list[dict]:
    """Each cluster of one class: size, mean map, and its candidate regions with the tests behind a flag.
    `reference`: where the images of the other classes put their relevance (a grid summing to 1; uniform when
    not given). The cluster's own fields are those of its compact region; `suspects` lists the flagged
    candidates: the compact region, the edge strip with the highest enrichment, and the border ring where the
    relevance goes round it (goes_round)."""
    n = len(pooled)
    grid = pooled.shape[-1] if n else 0
    ref = np.full((grid, grid), 1.0 / max(grid * grid, 1)) if reference is None else np.asarray(reference)
    shapes = structures(grid) if n else {}
    out = []
    for c in range(int(labels.max()) + 1 if n else 0):
        members = np.flatnonzero(labels == c)
        mean = pooled[members].mean(0)
        big = len(members) >= max(options["min_cluster_images"], options["min_cluster_share"] * n)
        compact = _candidate("compact", region_of(mean, options["mass"]), pooled[members], ref, object_freq)
        compact.update(concentrated=compact["area"] <= options["max_area"],
                       consistent=compact["member_share"] >= options["min_member_share"],
                       off_object=compact["object_frequency"] <= options["max_object"])
        compact["flagged"] = bool(big and compact["concentrated"] and compact["consistent"] and compact["off_object"])
        thin = [_candidate(name, mask, pooled[members], ref, object_freq) for name, mask in shapes.items()]
        for t in thin:
            t.update(concentrated=t["enrichment"] >= options["min_enrichment"],
                     consistent=t["member_share"] >= options["min_structure_share"],
                     off_object=t["object_frequency"] <= options["max_object"])
            t["flagged"] = bool(big and t["concentrated"] and t["consistent"] and t["off_object"])
        strips = [t for t in thin if t["flagged"] and t["shape"] != "border"]
        best_strip = max(strips, key=lambda t: t["enrichment"], default=None)
        border = next((t for t in thin if t["shape"] == "border" and t["flagged"] and goes_round(mean, shapes)), None)
        suspects = [t for t in (compact, best_strip, border) if t is not None and t["flagged"]]
        out.append({"cluster": c, "size": int(len(members)), "share_of_class": len(members) / n, "members": members,
                    "mean_map": mean, "big_enough": bool(big),
                    **{k: v for k, v in compact.items() if k not in ("shape", "flagged")},
                    "flagged": bool(suspects), "suspects": suspects})
    return out


def goes_round(mean_map: np.ndarray, shapes: dict[str, np.ndarray], min_side: float = 0.15) -> bool:
    """Whether a map's relevance on the border ring goes round it (at least 3 of its 4 sides hold `min_side` of
    the ring's relevance each): a frame. A mark in a corner or a line along one edge sits on the ring too, but
    the compact region and the edge strip are what they are."""
    ring = mean_map[shapes["border"]].sum()
    if ring <= 0:
        return False
    sides = [mean_map[shapes[k]].sum() / ring for k in ("top edge", "bottom edge", "left edge", "right edge")]
    return sum(v >= min_side for v in sides) >= 3


def pixel_mask(region: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) bool: the pixels of a region's cells, cut as adaptive pooling cuts them."""
    g = region.shape[0]
    mask = np.zeros((height, width), bool)
    for i, j in zip(*np.nonzero(region)):
        mask[(i * height) // g:-(-(i + 1) * height // g), (j * width) // g:-(-(j + 1) * width // g)] = True
    return mask


def control_region(region: np.ndarray, rng: np.random.Generator, object_freq: np.ndarray | None = None,
                   tolerance: float = 0.05) -> np.ndarray:
    """The control of a region: the same cells moved to a random place, or (where no shift fits, e.g. the border
    ring) as many cells drawn from outside it. Given the grid's `object_freq`, only places about as often on an
    object as the region itself (within `tolerance` of the closest) are drawn, overlapping the region as little
    as they can: pasting a piece of the object flips a prediction for a real reason, and a control off the object
    would make any object part look like a shortcut."""
    g = region.shape[0]
    obj = np.zeros(region.shape) if object_freq is None else np.asarray(object_freq, float)
    want = float(obj[region].mean())
    rows, cols = np.nonzero(region)
    places, score, overlap = [], [], []
    for dy in range(-rows.min(), g - rows.max()):
        for dx in range(-cols.min(), g - cols.max()):
            if dy or dx:
                places.append((dy, dx))
                score.append(abs(float(obj[rows + dy, cols + dx].mean()) - want))
                overlap.append(int(region[rows + dy, cols + dx].sum()))
    out = np.zeros_like(region)
    if places:
        score, overlap = np.asarray(score), np.asarray(overlap)
        near = score <= score.min() + tolerance
        best = np.flatnonzero(near & (overlap == overlap[near].min()))
        if overlap[best[0]] < len(rows):  # a place that moves at least one cell
            dy, dx = places[int(best[rng.integers(len(best))])]
            out[rows + dy, cols + dx] = True
            return out
    outside = np.flatnonzero(~region.ravel())
    pool = outside if len(outside) >= len(rows) else np.arange(g * g)
    closest = pool[np.argsort(np.abs(obj.ravel()[pool] - want), kind="stable")][:max(2 * len(rows), 1)]
    out.ravel()[rng.choice(closest, size=min(len(rows), len(closest)), replace=False)] = True
    return out


def box_of(region: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) in pixels of the bounding box of a region's cells (as adaptive pooling cut them)."""
    g = region.shape[0]
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    y0, y1 = (rows.min() * height) // g, -(-(rows.max() + 1) * height // g)
    x0, x1 = (cols.min() * width) // g, -(-(cols.max() + 1) * width // g)
    return int(y0), int(y1), int(x0), int(x1)
