"""Is one image a copy of another, as a person would judge it? The pixel check behind both duplicate searches
(the data audit's and the model embedding's).

A copy survives what people do to images: re-encoding (JPEG), brightness and contrast changes, a mirror, a small
rotation, a crop resized back to the original size, a shift. So each image becomes a small grey thumbnail
(`side` px, never upsampled past the images' own side, lightly blurred so JPEG noise counts little), and two
thumbnails are compared by normalised cross-correlation (NCC: invariant to brightness and contrast), at the best
of the second mirrored or not, rotated by each of `rotations` degrees and zoomed by each of `scales` (a crop of
85% is a zoom of 1.18), and shifted by up to `max_shift` of the side (torch's affine_grid and grid_sample do the
warps; the shifts are every placement of the first image's centre in the warped second). That grid's best
alignment is then refined continuously (rotation, zoom and shift by gradient descent on the difference left
after fitting brightness and contrast: a copy rotated by 7 degrees or cropped to 90% falls between the grid's
steps, and the difference a half-step leaves is as large as that between two garments of one cut). The distance
is that difference: 0 for a copy up to those changes. The threshold it is judged by is measured on real images
(tools/bench_copies.py: recall per kind of copy, and false pairs among distinct images).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ROTATIONS = (-10.0, -5.0, 0.0, 5.0, 10.0)
SCALES = (0.85, 0.92, 1.0, 1.09, 1.18)
MIN_CONTRAST = 0.02
CLIPPED = 0.97  # grey at or above this is taken as clipped white
COARSE = 0.3  # pairs less alike than this as they are (NCC, mirrored or not, shifted) are not searched further
REFINE_STEPS, REFINE_RATE = 60, 0.02  # Adam on (rotation, log zoom, shift): converged on the benchmark's copies
# only pairs the grid left within this are refined: every benchmark copy found after refinement was within 0.045
# on the grid (crops, the farthest, 99% within 0.04), against a tenth of distinct garments' candidate pairs
REFINE_BELOW = 0.045
# the continuous refinement stays within what the grid searches (a little beyond its last steps)
MAX_ROTATION, MIN_SCALE, MAX_SCALE, MAX_MOVE = 12.0, 0.82, 1.22, 0.4


def thumbnail(rgb, side: int, blur: float) -> np.ndarray:
    """An 8-bit RGB image (array or PIL image) as grey side x side in [0, 1], blurred by a Gaussian of `blur` px."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter
    im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb))
    g = np.asarray(im.convert("L").resize((side, side), Image.BILINEAR), np.float32) / 255
    return gaussian_filter(g, blur) if blur > 0 else g


def compare_side(paths: list[str], size: int) -> int:
    """The side the pixel check compares at: `size`, or the images' own (the median shorter side of `paths`,
    read from the headers) when smaller. Never upsampled: a shift of whole pixels in a 28 px garment is a
    fraction of a pixel at 32, which resampling blurs into a difference (Fashion-MNIST, shifted by 2 px:
    78% confirmed at 28, 42% at 32)."""
    from PIL import Image
    sides = []
    for p in paths:
        with Image.open(p) as im:
            sides.append(min(im.size))
    return int(min(size, np.median(sides))) if sides else size


def _warps(b: torch.Tensor, mirror: bool, rotation: float, scale: float, move=(0.0, 0.0)) -> torch.Tensor:
    """b (P, 1, s, s) mirrored, rotated by `rotation` degrees and zoomed by `scale` about the centre, then shifted
    (move: where the output's centre samples the input, as a share of the half side, x then y)."""
    if mirror:
        b = b.flip(-1)
    if rotation == 0 and scale == 1 and move == (0.0, 0.0):
        return b
    t = np.deg2rad(rotation)
    theta = torch.tensor([[np.cos(t) / scale, -np.sin(t) / scale, move[0]],
                          [np.sin(t) / scale, np.cos(t) / scale, move[1]]], dtype=b.dtype).expand(len(b), 2, 3)
    grid = F.affine_grid(theta, list(b.shape), align_corners=False)
    return F.grid_sample(b, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of every k x k window of x (P, s, s), flattened (P, placements): an integral image."""
    c = F.pad(x.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    box = c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]
    return (box / (k * k)).float().flatten(1)


def _unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    x = x - x.mean(dim, keepdim=True)
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-8)


def _search(a_t: torch.Tensor, b_t: torch.Tensor, m: int, warps, best: torch.Tensor, how: torch.Tensor,
            rows: torch.Tensor, chunk: int) -> None:
    """The best NCC of a's centre over b under each warp (mirror, rotation, scale) and every shift, for the pairs
    `rows`; best and how (mirror, rotation, scale, dy, dx) are updated in place."""
    s = a_t.shape[-1]
    k = s - 2 * m
    for lo in range(0, len(rows), chunk):
        idx = rows[lo:lo + chunk]
        kernel = _unit(a_t[idx, m:s - m, m:s - m].reshape(-1, k * k), 1).reshape(-1, 1, k, k)  # zero-mean, unit-norm
        bb = b_t[idx, None]
        for mirror, rot, sc in warps:
            w = _warps(bb, mirror, rot, sc)
            # NCC at every placement: the kernel sums to 0, so <kernel, patch> / |patch - its mean|
            dot = F.conv2d(w.transpose(0, 1), kernel, groups=len(kernel))[0].flatten(1)
            mean, sq = _box_mean(w[:, 0], k), _box_mean(w[:, 0] * w[:, 0], k)
            ncc = dot / ((sq - mean * mean).clamp_min(0) * (k * k)).sqrt().clamp_min(1e-6)
            val, at = ncc.max(1)
            better = val > best[idx]
            dy, dx = at // (2 * m + 1) - m, at % (2 * m + 1) - m
            rec = torch.stack([torch.full_like(val, float(mirror)), torch.full_like(val, rot), torch.full_like(val, sc),
                               dy.float(), dx.float()], 1)
            best[idx[better]] = val[better]
            how[idx[better]] = rec[better]


def distance(a: np.ndarray, b: np.ndarray, max_shift: float = 0.15, rotations=ROTATIONS, scales=SCALES,
             chunk: int = 512, blur: float = 0.0) -> dict:
    """For pairs of thumbnails a[i], b[i] (P, s, s), blurred by `blur` px when made: the difference left at the best
    alignment (see _residual), the alignment found by the best normalised cross-correlation of a's centre
    ((1 - 2 max_shift) of its side) over b rotated, zoomed and shifted, once as it is and once mirrored (a
    symmetric garment's mirror image can correlate a little better than the copy itself), each then refined
    continuously where the grid left the pair within REFINE_BELOW (_refined); the better of the two, with its NCC,
    mirror, rotation, scale and shift (dy, dx). Pairs whose NCC is below COARSE as they are (mirrored or not,
    shifted) are not searched further (no copy within these changes falls that low). Pairs where either
    thumbnail is flat get distance 1."""
    a_t, b_t = torch.as_tensor(np.asarray(a, np.float32)), torch.as_tensor(np.asarray(b, np.float32))
    n, s = a_t.shape[0], a_t.shape[-1]
    m = int(round(max_shift * s))
    flat = (a_t.flatten(1).std(1) < MIN_CONTRAST) | (b_t.flatten(1).std(1) < MIN_CONTRAST)
    best = {mirror: torch.full((n,), -2.0) for mirror in (False, True)}
    how = {mirror: torch.zeros((n, 5)) for mirror in (False, True)}
    for mirror in (False, True):
        _search(a_t, b_t, m, [(mirror, 0.0, 1.0)], best[mirror], how[mirror], torch.arange(n), chunk)
    searched = torch.nonzero(torch.maximum(best[False], best[True]) >= COARSE).ravel()
    rest = [(r, sc) for r in rotations for sc in scales if (r, sc) != (0.0, 1.0)]
    residual = {}
    for mirror in (False, True):
        _search(a_t, b_t, m, [(mirror, r, sc) for r, sc in rest], best[mirror], how[mirror], searched, chunk)
        left = _residual(a_t, b_t, how[mirror], m)
        near = torch.nonzero((best[mirror] >= COARSE) & (left <= REFINE_BELOW)).ravel()
        for lo in range(0, len(near), chunk):
            idx = near[lo:lo + chunk]
            left[idx] = torch.minimum(left[idx], _refined(a_t[idx], b_t[idx], how[mirror][idx], m, blur))
        left[best[mirror] < COARSE] = 1.0
        residual[mirror] = left
    mirrored = residual[True] < residual[False]
    out = torch.where(mirrored, residual[True], residual[False])
    ncc = torch.where(mirrored, best[True], best[False])
    found = torch.where(mirrored[:, None], how[True], how[False])
    out[flat | (torch.maximum(best[False], best[True]) < COARSE)] = 1.0
    return {"distance": out.numpy(), "ncc": ncc.numpy(), "mirror": found[:, 0].numpy().astype(np.int64),
            "rotation": found[:, 1].numpy(), "scale": found[:, 2].numpy(),
            "shift": found[:, 3:].numpy().astype(np.int64)}


def _residual(a: torch.Tensor, b: torch.Tensor, how: torch.Tensor, m: int) -> torch.Tensor:
    """At each pair's best alignment: the mean absolute difference between a's centre and b's matching patch after
    the least-squares gain and offset (b's brightness and contrast fitted to a's), over the pixels white in neither
    (a brightened copy clips its highlights; all pixels where fewer than half remain). Correlation alone cannot tell
    two distinct garments of one cut apart (their outlines agree); what a photometric change leaves, this does."""
    n, s = a.shape[0], a.shape[-1]
    k = s - 2 * m
    out = torch.ones(n)
    for mirror, rot, sc in {tuple(r) for r in how[:, :3].tolist()}:
        sel = torch.nonzero((how[:, 0] == mirror) & (how[:, 1] == rot) & (how[:, 2] == sc)).ravel()
        w = F.unfold(_warps(b[sel, None], bool(mirror), rot, sc), k)  # (p, k*k, placements)
        at = ((how[sel, 3] + m) * (2 * m + 1) + how[sel, 4] + m).long()
        pb = w[torch.arange(len(sel)), :, at]
        pa = a[sel, m:s - m, m:s - m].reshape(len(sel), -1)
        # pixels white in either image are left out where enough remain: brightening clips highlights
        out[sel] = _fit_difference(pa, pb, absolute=True)
    return out


def _fit_difference(pa: torch.Tensor, pb: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Per row: the weighted mean (absolute or squared) difference between pa and pb after the least-squares gain
    and offset of pb fitted to pa, over the pixels white in neither (all pixels where fewer than half remain)."""
    keep = (pa < CLIPPED) & (pb.detach() < CLIPPED)
    keep |= keep.float().mean(1, keepdim=True) < 0.5
    wgt = keep.float() / keep.float().sum(1, keepdim=True)
    cb, ca = pb - (pb * wgt).sum(1, keepdim=True), pa - (pa * wgt).sum(1, keepdim=True)
    gain = (wgt * ca * cb).sum(1, keepdim=True) / (wgt * cb * cb).sum(1, keepdim=True).clamp_min(1e-12)
    e = gain * cb - ca
    return (wgt * (e.abs() if absolute else e * e)).sum(1)


def _refined(a: torch.Tensor, b: torch.Tensor, how: torch.Tensor, m: int, blur: float = 0.0) -> torch.Tensor:
    """_residual after refining each pair's grid alignment continuously: b (mirrored as found) rotated, zoomed and
    shifted by a similarity warp whose angle, log zoom and shift descend the squared difference left after the
    brightness and contrast fit (Adam, REFINE_STEPS steps), within the searched ranges. Starts where the grid
    ended, so it only lowers what the grid found. Both thumbnails were blurred by `blur` px; zooming one by z
    scales its blur by z, so the sharper of the two is blurred to match first (_match_blur)."""
    n, s = a.shape[0], a.shape[-1]
    a, b = _match_blur(a, b, how[:, 2], blur)
    b = torch.where(how[:, 0, None, None] > 0, b.flip(-1), b)[:, None]
    angle = torch.deg2rad(how[:, 1]).clone().requires_grad_(True)
    log_scale = torch.log(how[:, 2]).clone().requires_grad_(True)
    # the grid's shift (dy, dx pixels of the warped image) as the warp's translation in the input's coordinates
    cos, sin, scale = torch.cos(angle.detach()), torch.sin(angle.detach()), how[:, 2]
    dx, dy = how[:, 4] * 2 / s, how[:, 3] * 2 / s
    move = torch.stack([(cos * dx - sin * dy) / scale, (sin * dx + cos * dy) / scale], 1).requires_grad_(True)
    pa = a[:, m:s - m, m:s - m].reshape(n, -1)

    def left(absolute: bool) -> torch.Tensor:
        c, si, z = torch.cos(angle), torch.sin(angle), torch.exp(log_scale)
        theta = torch.stack([torch.stack([c / z, -si / z, move[:, 0]], 1), torch.stack([si / z, c / z, move[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, [n, 1, s, s], align_corners=False)
        w = F.grid_sample(b, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
        return _fit_difference(pa, w[:, m:s - m, m:s - m].reshape(n, -1), absolute)

    opt = torch.optim.Adam([angle, log_scale, move], lr=REFINE_RATE)
    with torch.enable_grad():
        for _ in range(REFINE_STEPS):
            opt.zero_grad()
            left(False).sum().backward()
            opt.step()
            with torch.no_grad():
                angle.clamp_(-np.deg2rad(MAX_ROTATION), np.deg2rad(MAX_ROTATION))
                log_scale.clamp_(np.log(MIN_SCALE), np.log(MAX_SCALE))
                move.clamp_(-MAX_MOVE, MAX_MOVE)
    with torch.no_grad():
        return left(True)


def _match_blur(a: torch.Tensor, b: torch.Tensor, zoom: torch.Tensor, blur: float):
    """a and b (P, s, s), both blurred by `blur` px, for a comparison of a with b zoomed by `zoom` (P,): b's blur
    becomes blur x zoom in a's pixels, so a is blurred further where zoom > 1 (to blur x zoom) and b where zoom < 1
    (to blur / zoom in its own pixels). A crop of 89% resized back is blurred less than its original zoomed to
    match it; unmatched, that alone leaves a difference as large as between two garments of one cut."""
    if blur <= 0:
        return a, b
    from scipy.ndimage import gaussian_filter
    a, b = a.clone(), b.clone()
    for z in {float(v) for v in zoom.tolist()} - {1.0}:
        sel = torch.nonzero(zoom == z).ravel()
        x, extra = (a, blur * np.sqrt(z * z - 1)) if z > 1 else (b, blur * np.sqrt(1 / (z * z) - 1))
        x[sel] = torch.as_tensor(gaussian_filter(x[sel].numpy(), (0, extra, extra)), dtype=x.dtype)
    return a, b


def descriptor(thumbs: np.ndarray) -> np.ndarray:
    """Rows for a nearest-neighbour search of copy candidates: each thumbnail zero-mean and unit-norm, so a
    brighter or flatter copy lands next to its original (Euclidean distance = sqrt(2 - 2 NCC))."""
    x = np.asarray(thumbs, np.float32).reshape(len(thumbs), -1)
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


# The query's variants a candidate search tries (zoom, shift x, shift y): as it is, zoomed in (a copy with a margin
# added), and zoomed out by the share a crop of 85-92% keeps, about each of nine centres (a crop anywhere in the
# image); each mirrored too. On the benchmark's copies 91% of crops are proposed, against 70% with a zoom about the
# centre alone.
VARIANTS = ((1.0, 0.0, 0.0), (1.18, 0.0, 0.0),
            *((zoom, x, y) for zoom in (0.85, 0.92) for x in (-0.1, 0.0, 0.1) for y in (-0.1, 0.0, 0.1)))
SHIFTED_K = 1  # the shifted zoom-outs propose their nearest thumbnail only: 91% of crops for 1.6 times the pairs


def _zoom(t: np.ndarray, scale: float, mirror: bool, move=(0.0, 0.0)) -> np.ndarray:
    return _warps(torch.as_tensor(np.asarray(t, np.float32))[:, None], mirror, 0.0, scale, move)[:, 0].numpy()


def candidates(queries: np.ndarray, reference: np.ndarray, k: int, exclude_self: bool = False,
               variants: bool = True) -> np.ndarray:
    """(query, reference) index pairs for thumbnails: each query's k nearest reference thumbnails by Euclidean
    distance of their descriptors (scikit-learn's brute-force search), for the query as it is and (variants)
    mirrored, zoomed in and zoomed out about several centres (VARIANTS), so a mirrored or cropped copy is proposed
    too. exclude_self: queries are the reference (never an image with itself, each unordered pair once)."""
    from sklearn.neighbors import NearestNeighbors
    if not len(queries) or not len(reference):
        return np.zeros((0, 2), np.int64)
    search = NearestNeighbors(algorithm="brute").fit(descriptor(reference))
    found = []
    for mirror in ((False, True) if variants else (False,)):
        for scale, x, y in (VARIANTS if variants else VARIANTS[:1]):
            q = _zoom(queries, scale, mirror, (x, y)) if (mirror or (scale, x, y) != VARIANTS[0]) else queries
            kk = min((k if (x, y) == (0.0, 0.0) else SHIFTED_K) + int(exclude_self), len(reference))
            idx = search.kneighbors(descriptor(q), n_neighbors=kk, return_distance=False)
            found.append(np.column_stack([np.repeat(np.arange(len(queries)), kk), idx.ravel()]))
    pairs = np.unique(np.concatenate(found), axis=0)
    if exclude_self:
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        pairs = np.unique(np.sort(pairs, 1), axis=0)
    return pairs.astype(np.int64)
