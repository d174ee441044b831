"""The shape_texture stage: does the model decide by shape or by texture? (Geirhos et al. 2019: ImageNet
CNNs mostly by texture, people by shape.) Built from the robustness sample, without stylised data:

- cue conflict: the silhouette of image A (class a) filled with the texture of image B of another class
  b (patches from inside B's figure, shuffled: its local texture kept, its shape destroyed), with A's
  contour drawn on top. A prediction of a is a shape decision, of b a texture decision; the shape bias is
  shape / (shape + texture) decisions (Geirhos' definition), with a Wilson interval;
- patch shuffling at grids 1, 2, 4, 8 (texture kept, shape destroyed; grid 1 is the image itself);
- texture removal: Canny edge maps (Geirhos' edge stimuli), filled silhouettes, and strong Gaussian
  smoothing (shape kept); drawn in the data's own polarity (ink that stands out on the image's background).
Written by hand: no maintained library builds cue-conflict stimuli from a user's own test set (Geirhos'
are fixed ImageNet files, which cannot be downloaded here).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from cvaudit.core import stats
from cvaudit.core.files import save_npz
from cvaudit.net.models import auto_batch
from cvaudit.net.pixel_space import image_generator, pixel_model, predict
from cvaudit.net.sample import robustness_images

log = logging.getLogger("cvaudit.robust.shape_texture")

# Geirhos et al. 2019 (Fig. 4): shape bias of ImageNet-trained CNNs and of people on cue-conflict images.
REFERENCE = {"ImageNet CNNs (ResNet-50 about 22%, range about 20-30%)": 0.22, "people": 0.96}


def patch_shuffle(x: torch.Tensor, grid: int, seeds) -> torch.Tensor:
    """Cut each image (N, C, H, W) into grid x grid patches and put them back in a random order (one seeded
    permutation per image). Rows or columns past the last whole patch stay where they are; grid 1 is the
    identity."""
    if grid <= 1 or not len(x):
        return x
    n, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    out = x.clone()
    core = x[:, :, :ph * grid, :pw * grid].reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    core = core.reshape(n, grid * grid, c, ph, pw)
    for i, s in enumerate(seeds):
        perm = torch.randperm(grid * grid, generator=torch.Generator().manual_seed(int(s)))
        core[i] = core[i, perm.to(core.device)]
    core = core.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, ph * grid, pw * grid)
    out[:, :, :ph * grid, :pw * grid] = core
    return out


def figure_mask(img: np.ndarray, threshold: float = 0.1) -> np.ndarray | None:
    """The figure of an image (H, W, 3 in [0, 1]) as a boolean mask: pixels whose colour differs from the
    border's median colour by more than `threshold`, closed and with holes filled; None when the image has
    no clear figure on a plain background (the mask would cover under 5% or over 95% of it)."""
    from scipy import ndimage
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    dist = np.abs(img - np.median(border, 0)).max(-1)
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(dist > threshold, iterations=1))
    return mask if 0.05 <= mask.mean() <= 0.95 else None


def silhouette(img: np.ndarray) -> np.ndarray:
    """figure_mask, or the whole frame for an image without a clear figure."""
    m = figure_mask(img)
    return np.ones(img.shape[:2], bool) if m is None else m


def outline(mask: np.ndarray) -> np.ndarray:
    """The contour of a mask, about 1/32 of the image side thick (at least one pixel)."""
    from scipy import ndimage
    width = max(1, mask.shape[0] // 32)
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def edges(img: np.ndarray, sigma: float) -> np.ndarray:
    """Canny edges of the image's luminance (boolean, H x W)."""
    from skimage.feature import canny
    return canny(img @ np.array([0.299, 0.587, 0.114]), sigma=sigma)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _torch(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(0, 3, 1, 2).to(like.device)


def background(img: np.ndarray) -> np.ndarray:
    """The image's background colour (the median of its border pixels) and the ink that stands out on it
    (black on a light background, white on a dark one): stimuli keep the data's own polarity (white
    garments on black for Fashion-MNIST, dark lines on white for photos)."""
    bg = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), 0)
    ink = np.zeros(3) if bg.mean() > 0.5 else np.ones(3)
    return bg, ink


def texture_removed(x: torch.Tensor, kind: str, sigma: float, smooth: float) -> torch.Tensor:
    """edges: the Canny edges in ink on the image's background; silhouette: the figure filled with ink on
    its background; smooth: Gaussian blur with sigma = smooth x the image side."""
    if kind == "smooth":
        from cvaudit.net.pixel_space import blur
        return blur(x, smooth * x.shape[-1]) if len(x) else x
    imgs = _np(x)
    out = np.empty_like(imgs)
    for i, im in enumerate(imgs):
        bg, ink = background(im)
        out[i] = bg
        out[i][edges(im, sigma) if kind == "edges" else silhouette(im)] = ink
    return _torch(out, x)


def texture_fill(img: np.ndarray, grid: int, seed: int) -> np.ndarray:
    """A frame tiled with the image's own texture: grid x grid patches drawn at random (seeded) from the
    patches that lie wholly inside its figure (else those at least 75% inside, else the most covered; any
    patch for an image without a clear figure), so neither its shape nor its background comes along."""
    h, w = img.shape[:2]
    ph, pw = max(1, h // grid), max(1, w // grid)
    mask = figure_mask(img)
    cover = np.array([[1.0 if mask is None else mask[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw].mean()
                       for c in range(grid)] for r in range(grid)]).ravel()
    pool = np.flatnonzero(cover >= 1.0)
    if not len(pool):
        pool = np.flatnonzero(cover >= min(0.75, cover.max()))
    rng = np.random.default_rng(seed)
    out = np.empty_like(img)
    out[:] = img.mean((0, 1))
    for r in range(-(-h // ph)):
        for c in range(-(-w // pw)):
            k = int(rng.choice(pool))
            src = img[(k // grid) * ph:(k // grid + 1) * ph, (k % grid) * pw:(k % grid + 1) * pw]
            dst = out[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
            dst[:] = src[:dst.shape[0], :dst.shape[1]]
    return out


def cue_conflict(x: torch.Tensor, partner: np.ndarray, grid: int, sigma: float, seeds) -> tuple[torch.Tensor, np.ndarray]:
    """Image i's figure filled with the texture of image partner[i] (texture_fill: its patches, shuffled),
    on image i's background, its contour drawn in ink: the shape without the texture inside it. An image
    without a clear figure (a photo filling the frame) gets the texture over the whole frame with its
    coarse Canny edges (sigma x 3) drawn on top instead. Returns the images and, per image, whether it had
    a clear figure."""
    shapes, textures = _np(x), _np(x[torch.as_tensor(partner, device=x.device)])
    out = np.empty_like(shapes)
    has_figure = np.zeros(len(shapes), bool)
    for i, im in enumerate(shapes):
        m = figure_mask(im)
        tex = texture_fill(textures[i], grid, seeds[i])
        bg, ink = background(im)
        has_figure[i] = m is not None
        if m is None:
            out[i] = tex
            out[i][edges(im, 3 * sigma)] = ink
        else:
            out[i] = bg
            out[i][m] = tex[m]
            out[i][outline(m)] = ink
    return _torch(out, x), has_figure


def pick_partners(y: np.ndarray, seed: int) -> np.ndarray:
    """For each image, a seeded image of another class (-1 when every image has the same class)."""
    rng = np.random.default_rng(seed)
    out = np.full(len(y), -1)
    for i, c in enumerate(y):
        other = np.flatnonzero(y != c)
        if len(other):
            out[i] = rng.choice(other)
    return out


def shape_texture(net, x: torch.Tensor, y: torch.Tensor, options: dict, seed: int, batch: int) -> dict:
    """Every measurement on images x (N, 3, H, W) in [0, 1] with targets y: accuracy per shuffle grid and
    per texture removal, and the cue-conflict decisions with the shape bias."""
    n = len(x)
    yn = y.numpy()
    seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=image_generator(seed, i))) for i in range(n)]
    clean_pred, _ = predict(net, x, batch)
    out = {"n": n, "clean": stats.proportion(int((clean_pred == y).sum()), n), "shuffle": {}, "removal": {}}
    for g in options["grids"]:
        p, _ = predict(net, patch_shuffle(x, g, seeds), batch)
        out["shuffle"][str(g)] = {**stats.proportion(int((p == y).sum()), n),
                                  "unchanged": float((p == clean_pred).float().mean()) if n else None}
    for kind in ("edges", "silhouette", "smooth"):
        p, _ = predict(net, texture_removed(x, kind, options["edge_sigma"], options["smooth"]), batch)
        out["removal"][kind] = stats.proportion(int((p == y).sum()), n)
    partner = pick_partners(yn, seed)
    keep = np.flatnonzero(partner >= 0)
    conflict, has_figure = cue_conflict(x[keep], partner[keep], options["texture_grid"], options["edge_sigma"],
                                        [seeds[i] for i in keep]) if len(keep) else (x[:0], np.zeros(0, bool))
    p, _ = predict(net, conflict, batch)
    p = p.numpy()
    shape_cls, texture_cls = yn[keep], yn[partner[keep]]
    is_shape, is_texture = p == shape_cls, p == texture_cls
    k_shape, k_texture = int(is_shape.sum()), int(is_texture.sum())
    out["cue_conflict"] = {"n": int(len(keep)), "shape": k_shape, "texture": k_texture,
                           "neither": int(len(keep) - k_shape - k_texture),
                           "shape_bias": stats.proportion(k_shape, k_shape + k_texture),
                           "texture_grid": options["texture_grid"], "with_figure": int(has_figure.sum())}
    if k_shape + k_texture == 0:
        out["cue_conflict"]["shape_bias"]["note"] = "no prediction named either the shape's or the texture's class"
    why = reference_incomparable(x)
    out["reference"] = {} if why else REFERENCE
    out["reference_note"] = why
    return out, {"conflict": conflict, "keep": keep, "partner": partner[keep], "pred": p}


def reference_incomparable(x: torch.Tensor) -> str:
    """Why Geirhos et al.'s ImageNet numbers do not apply to these images ('' when they do): their shape bias was
    measured on colour photos of ImageNet's classes at ImageNet's resolution. On small grey images (Fashion-MNIST's
    28 px garments) a network with no spatial structure at all can score the highest."""
    side = min(x.shape[-2:])
    grey = bool((x.amax(1) - x.amin(1)).amax() <= 2 / 255) if len(x) else True
    if side < 100 or grey:
        return (f"No reference values: Geirhos et al.'s were measured on colour photos at ImageNet's resolution, these "
                f"images are {'grey' if grey else 'colour'} at {side} px; compare models audited on the same data instead")
    return ""


def run_shape_texture(model_path, manifest, options: dict, seed: int, device: str, threads: int, out) -> dict:
    t0 = time.time()
    model, spec, net, dev = pixel_model(model_path, seed, device, threads, frozen=True)
    x8, y, _ = robustness_images(manifest, spec, options["max_images"], seed)
    x = x8.to(dev).float().div(255)
    batch = auto_batch(x.shape[-2], x.shape[-1], dev)
    result, arrays = shape_texture(net, x, y, options, seed, batch)
    result["class_names"] = list(spec["class_names"])
    yk = y.numpy()[arrays["keep"]]  # examples: one image per class in turn
    turn = np.array([(yk[:j] == yk[j]).sum() for j in range(len(yk))])
    pick = np.lexsort((yk, turn))[:options["examples"]]
    to8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
    keep, partner = arrays["keep"][pick], arrays["partner"][pick]
    xs = x[torch.as_tensor(keep, device=x.device)]
    shows = {f"grid_{g}": to8(patch_shuffle(xs, g, [seed] * len(keep))) for g in options["grids"] if g > 1}
    shows.update({kind: to8(texture_removed(xs, kind, options["edge_sigma"], options["smooth"]))
                  for kind in ("edges", "silhouette", "smooth")})
    result["seconds"] = round(time.time() - t0, 2)
    save_npz(out, result, shape_images=to8(xs), texture_images=to8(x[torch.as_tensor(partner, device=x.device)]),
             conflict_images=to8(arrays["conflict"][torch.as_tensor(pick, device=x.device)]),
             shape_class=y.numpy()[keep], texture_class=y.numpy()[partner], conflict_pred=arrays["pred"][pick], **shows)
    cc = result["cue_conflict"]
    log.info("shape bias %s (%d shape, %d texture of %d); shuffle %s (%.1fs)", cc["shape_bias"]["value"], cc["shape"],
             cc["texture"], cc["n"], {g: round(v["value"], 3) for g, v in result["shuffle"].items()}, result["seconds"])
    return result
