"""The embedding_duplicates stage (one job per model): near duplicates across splits that the data audit's
perceptual hash misses, found as nearest neighbours in the model's own embedding space.

A model trained with flips and shifts maps a flipped or shifted copy of a training image next to it, where a
pHash (and a pixel difference) sees another image; and a test image the model has effectively seen through
its augmentation is a leak for that model. So, for every test image (the represent stage's penultimate
embeddings), its `neighbors` nearest training and validation images (at most `max_reference`, a seeded sample
beyond) by cosine distance of the centred embeddings (scikit-learn's brute-force search); a candidate pair is a
copy when, aligned as a person would (cvaudit.data.copies: the best alignment over mirror, rotation, zoom and shift by
up to `max_shift` of the side, at size x size or the images' own side when smaller, slightly blurred so JPEG
noise counts little), the difference left after fitting brightness and contrast is at most
`max_pixel_difference`. An embedding alone pairs distinct but similar images (Fashion-MNIST: a classifier maps
most plain T-shirts together); the pixel check keeps only copies.

Measured on Fashion-MNIST (tools/bench_embedding_duplicates.py): see docs/data-audit.md."""
from __future__ import annotations

import logging
import time

import numpy as np

from cvaudit.core import stats
from cvaudit.core.files import load_npz, save_npz
from cvaudit.core.images import load_rgb
from cvaudit.core.manifest import read_manifest
from cvaudit.data import copies
from cvaudit.data.copies import compare_side

log = logging.getLogger("cvaudit.represent.embedding_duplicates")


# ----------------------------------------------------------------------------- neighbours
def nearest(queries: np.ndarray, reference: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest reference rows of every query by cosine distance, both centred on the reference's mean (a
    classifier's post-ReLU features share a large common part that would make every pair look alike):
    (indices, distances), nearest first."""
    from sklearn.neighbors import NearestNeighbors
    reference = np.asarray(reference, np.float32)
    centre = reference.mean(0)
    search = NearestNeighbors(n_neighbors=min(k, len(reference)), metric="cosine", algorithm="brute")
    dist, idx = search.fit(reference - centre).kneighbors(np.asarray(queries, np.float32) - centre)
    return idx, dist


# ----------------------------------------------------------------------------- the pixel check
def thumbnail(path, size: int, blur: float) -> np.ndarray:
    """The image as a person sees it (orientation, alpha, bit depth: load_rgb), grey at size x size in [0, 1],
    blurred by a Gaussian of `blur` pixels."""
    return copies.thumbnail(load_rgb(path), size, blur)


def reference_rows(manifest, cap: int, seed: int) -> tuple[list[dict], int]:
    """The training and validation images the test images are searched against: all of them, or a seeded
    sample of `cap` (in manifest order); with how many there are."""
    rows = [r for r in read_manifest(manifest) if r["split"] in ("train", "val")]
    if len(rows) <= cap:
        return rows, len(rows)
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), cap, replace=False))
    return [rows[i] for i in keep], len(rows)


def confirm(test_paths: list[str], ref_paths: list[str], idx: np.ndarray, options: dict, chunk: int = 4096) -> dict:
    """The pixel check of every candidate pair (test i, its neighbours idx[i]). Each image is read once, the
    candidates' only (4 KB each at 32 px); the pairs are compared a chunk at a time, so memory holds the
    thumbnails, never a copy per pair."""
    size, blur = compare_side(test_paths, options["size"]), options["blur"]
    thumbs_test = np.stack([thumbnail(p, size, blur) for p in test_paths])
    used, at = np.unique(idx, return_inverse=True)  # the candidates only, and where each pair's sits among them
    thumbs_ref = np.stack([thumbnail(ref_paths[j], size, blur) for j in used])
    qi, ri = np.repeat(np.arange(len(test_paths)), idx.shape[1]), at.ravel()
    parts = [copies.distance(thumbs_test[qi[lo:lo + chunk]], thumbs_ref[ri[lo:lo + chunk]], options["max_shift"],
                             blur=blur)
             for lo in range(0, len(qi), chunk)]
    keys = ("distance", "mirror", "rotation", "scale", "shift")
    out = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    return {"query": qi, "side": size, "difference": out.pop("distance"), **out}


def leaked_test_paths(audit_path) -> tuple[set[str], set[tuple[str, str]]]:
    """The data audit's leaked test images and its pairs (as paths), to tell what the embedding adds."""
    a = load_npz(audit_path)
    paths = [str(p) for p in a["paths"]]
    return {paths[i] for i in a["leaked"]}, {frozenset((paths[i], paths[j])) for i, j, _ in a["pairs"]}


def run_embedding_duplicates(model_path, manifest, embeddings, audit, options: dict, seed: int, device: str,
                             threads: int, out) -> dict:
    from cvaudit.net.features import stream_features
    from cvaudit.net.pixel_space import start_stage
    t0 = time.time()
    emb = load_npz(embeddings)
    test_paths = [str(p) for p in emb["paths"]]
    refs, total = reference_rows(manifest, options["max_reference"], seed)
    meta = {"n_test": len(test_paths), "n_reference": len(refs), "reference_total": total,
            "neighbors": options["neighbors"], "options": options, "why": ""}
    arrays = {"test_paths": np.array(test_paths), "ref_paths": np.array([r["path"] for r in refs])}
    phash_leaked, phash_pairs = leaked_test_paths(audit)
    if not refs or not test_paths:
        meta.update(why="the dataset has no training or validation image" if not refs else "the test split is empty",
                    pairs=0, new_pairs=0, leaked=None, leaked_by_embedding=None, leaked_only_by_embedding=None,
                    leaked_share=None, candidates_per_image=0, side=None, seconds=round(time.time() - t0, 2))
        save_npz(out, meta, **arrays)
        log.info("embedding duplicates not searched: %s", meta["why"])
        return meta
    model, spec, dev = start_stage(model_path, seed, device, threads)
    log.info("embedding %d training/validation images (of %d) to search %d test images' %d nearest",
             len(refs), total, len(test_paths), options["neighbors"])
    ref_emb = stream_features(model, refs, spec, dev)["embeddings"]
    idx, dist = nearest(emb["embeddings"], ref_emb, options["neighbors"])
    log.info("confirming %d candidate pairs on the pixels", idx.size)
    c = confirm(test_paths, arrays["ref_paths"].tolist(), idx, options)
    ok = c["difference"] <= options["max_pixel_difference"]
    q, r = c["query"][ok], idx.ravel()[ok]
    known = np.array([frozenset((test_paths[i], refs[j]["path"])) in phash_pairs for i, j in zip(q, r)], bool)
    found = {test_paths[i] for i in q}
    leaked = found | (phash_leaked & set(test_paths))
    meta.update(pairs=int(ok.sum()), new_pairs=int((~known).sum()), leaked_by_embedding=len(found),
                leaked_only_by_embedding=len(found - phash_leaked), leaked=len(leaked),
                leaked_share=stats.proportion(len(leaked), len(test_paths)),
                candidates_per_image=int(idx.shape[1]), side=c["side"], seconds=round(time.time() - t0, 2))
    order = np.lexsort((c["difference"][ok], known))  # what only the embedding found first, closest first
    save_npz(out, meta, **arrays, test_index=q[order], ref_index=r[order], by_phash=known[order],
             difference=c["difference"][ok][order], mirror=c["mirror"][ok][order], shift=c["shift"][ok][order],
             distance=dist.ravel()[ok][order].astype(np.float32),
             leaked_index=np.flatnonzero([p in leaked for p in test_paths]))
    log.info("embedding duplicates: %d pairs confirmed (%d the pHash missed); %d test images leaked in all (%.1fs)",
             meta["pairs"], meta["new_pairs"], meta["leaked"], meta["seconds"])
    return meta
