"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019) at 5 severities, ported from their
reference code (github.com/hendrycks/robustness, ImageNet-C/create_c: make_imagenet_c.py for 224 px,
make_cifar_c.py for 32 px; Apache-2.0) onto numpy, SciPy, scikit-image and Pillow.

Why a port: no maintained library implements them faithfully on today's stack. imagecorruptions 1.1.2
(the usual package) no longer imports (scikit-image removed gaussian's `multichannel`, setuptools removed
pkg_resources); albumentations and kornia have look-alikes with other parameters. Its wheel is still
installed (without dependencies) for its frost photographs, which this module reads as data.

What differs from the reference, on purpose:
- every random draw comes from a numpy Generator passed in (one per image, corruption and severity), so
  a corrupted image does not depend on its batch, its shard or the order of jobs;
- ImageMagick's motion blur (Wand, not installable here) is imagecorruptions' numpy re-implementation
  (a line of shifted copies weighted by a half-Gaussian), and OpenCV calls are their SciPy equivalents
  (filter2D -> ndimage.correlate with mirror borders; GaussianBlur of the defocus disk -> the same
  normalised 1-D Gaussian kernel; warpAffine -> skimage warp with reflect borders);
- the hard-coded 224 or 32 px sizes follow the image: a 28 px image uses the CIFAR-10-C table (images
  under 100 px), a 64 or 299 px one the ImageNet-C table scaled to its side where the reference scales
  (elastic transform, frost crop). Tiny-ImageNet-C's own table is not ported.
"""
from __future__ import annotations

import importlib.util
import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

CORRUPTIONS = {  # name: category, in the paper's order
    "gaussian_noise": "noise", "shot_noise": "noise", "impulse_noise": "noise",
    "defocus_blur": "blur", "glass_blur": "blur", "motion_blur": "blur", "zoom_blur": "blur",
    "snow": "weather", "frost": "weather", "fog": "weather", "brightness": "weather",
    "contrast": "digital", "elastic_transform": "digital", "pixelate": "digital", "jpeg_compression": "digital",
}
SMALL = 100  # images narrower than this use the CIFAR-10-C table

# (ImageNet-C table, CIFAR-10-C table): five severities each, as in the reference code.
TABLES = {
    "gaussian_noise": ([.08, .12, .18, .26, .38], [.04, .06, .08, .09, .10]),
    "shot_noise": ([60, 25, 12, 5, 3], [500, 250, 100, 75, 50]),
    "impulse_noise": ([.03, .06, .09, .17, .27], [.01, .02, .03, .05, .07]),
    "defocus_blur": ([(3, .1), (4, .5), (6, .5), (8, .5), (10, .5)], [(.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1)]),
    "glass_blur": ([(.7, 1, 2), (.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
                   [(.05, 1, 1), (.25, 1, 1), (.4, 1, 1), (.25, 1, 2), (.4, 1, 2)]),
    "motion_blur": ([(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)], [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)]),
    "zoom_blur": ([(1.11, .01), (1.16, .01), (1.21, .02), (1.26, .02), (1.31, .03)],
                  [(1.06, .01), (1.11, .01), (1.16, .01), (1.21, .01), (1.26, .01)]),
    "snow": ([(.1, .3, 3, .5, 10, 4, .8), (.2, .3, 2, .5, 12, 4, .7), (.55, .3, 4, .9, 12, 8, .7),
              (.55, .3, 4.5, .85, 12, 8, .65), (.55, .3, 2.5, .85, 12, 12, .55)],
             [(.1, .2, 1, .6, 8, 3, .95), (.1, .2, 1, .5, 10, 4, .9), (.15, .3, 1.75, .55, 10, 4, .9),
              (.25, .3, 2.25, .6, 12, 6, .85), (.3, .3, 1.25, .65, 14, 12, .8)]),
    "frost": ([(1, .4), (.8, .6), (.7, .7), (.65, .7), (.6, .75)], [(1, .2), (1, .3), (.9, .4), (.85, .4), (.75, .45)]),
    "fog": ([(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)], [(.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)]),
    "brightness": ([.1, .2, .3, .4, .5], [.05, .1, .15, .2, .3]),
    "contrast": ([.4, .3, .2, .1, .05], [.75, .5, .4, .3, .15]),
    # ImageNet-C's were written with 244 where 224 was meant (the reference says so): kept, as fractions
    "elastic_transform": ([(2, .7, .1), (2, .08, .2), (.05, .01, .02), (.07, .01, .02), (.12, .01, .02)],
                          [(0, 0, .08), (.05, .2, .07), (.08, .06, .06), (.1, .04, .05), (.1, .03, .03)]),
    "pixelate": ([.6, .5, .4, .3, .25], [.95, .9, .85, .75, .65]),
    "jpeg_compression": ([25, 18, 15, 10, 7], [80, 65, 58, 50, 40]),
}


def table(side: int) -> str:
    return "CIFAR-10-C" if side < SMALL else "ImageNet-C"


def _param(name: str, severity: int, side: int):
    return TABLES[name][1 if side < SMALL else 0][severity - 1]


def corrupt(img: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One corruption at severity 1-5 of an 8-bit RGB image (H, W, 3) -> 8-bit RGB of the same size."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name}; known: {', '.join(CORRUPTIONS)}")
    side = min(img.shape[:2])
    out = globals()[name](img, _param(name, severity, side), rng, side)
    return np.clip(np.asarray(out, np.float64), 0, 255).astype(np.uint8)  # truncated, as the reference's np.uint8


# ----------------------------------------------------------------------------- helpers
def _gaussian(x, sigma, **kw):
    from skimage.filters import gaussian
    return gaussian(x, sigma=sigma, channel_axis=-1 if x.ndim == 3 else None, **kw)


def _gauss_kernel_1d(ksize: int, sigma: float) -> np.ndarray:
    k = np.exp(-((np.arange(ksize) - (ksize - 1) / 2) ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """The defocus kernel: a disk, normalised, smoothed by a 3 x 3 (5 x 5 past radius 8) Gaussian."""
    from scipy.ndimage import correlate1d
    L = np.arange(-8, 9) if radius <= 8 else np.arange(-int(radius), int(radius) + 1)
    ksize = 3 if radius <= 8 else 5
    X, Y = np.meshgrid(L, L)
    d = ((X ** 2 + Y ** 2) <= radius ** 2).astype(np.float32)
    d /= d.sum()
    k = _gauss_kernel_1d(ksize, alias_blur)
    return correlate1d(correlate1d(d, k, 0, mode="mirror"), k, 1, mode="mirror")


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] (mapsize a power of two), as in the reference."""
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """Zoom into the centre by zoom_factor, keeping the size (bilinear)."""
    from scipy.ndimage import zoom
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / zoom_factor)), int(np.ceil(w / zoom_factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = zoom(img[top:top + ch, left:left + cw], (zoom_factor, zoom_factor) + (1,) * (img.ndim - 2), order=1)
    th, tw = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[th:th + h, tw:tw + w]


def _shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    if dx < 0:
        shifted = np.roll(image, shift=image.shape[1] + dx, axis=1)
        shifted[:, dx:] = shifted[:, dx - 1:dx]
    elif dx > 0:
        shifted = np.roll(image, shift=dx, axis=1)
        shifted[:, :dx] = shifted[:, dx:dx + 1]
    else:
        shifted = image
    if dy < 0:
        shifted = np.roll(shifted, shift=image.shape[0] + dy, axis=0)
        shifted[dy:, :] = shifted[dy - 1:dy, :]
    elif dy > 0:
        shifted = np.roll(shifted, shift=dy, axis=0)
        shifted[:dy, :] = shifted[dy:dy + 1, :]
    return shifted


def motion(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """Motion blur along `angle` degrees (imagecorruptions' stand-in for ImageMagick's)."""
    width = int(radius) * 2 + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    py, px = width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle))
    hyp = math.hypot(py, px)
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(width):
        dy, dx = -math.ceil(i * py / hyp - 0.5), -math.ceil(i * px / hyp - 0.5)
        if abs(dy) >= x.shape[0] or abs(dx) >= x.shape[1]:
            break
        out += k[i] * _shift(x, dx, dy)
    return out


def _glass_swaps(x: np.ndarray, delta: int, iterations: int, offsets: np.ndarray) -> None:
    """The reference's local pixel shuffle, in place, offsets drawn up front. The reference's "swap" is a tuple
    assignment of two numpy views (`x[h, w], x[hp, wp] = x[hp, wp], x[h, w]`): the second view already holds the
    first pixel's new value, so each step copies pixel (hp, wp) onto (h, w) and leaves (hp, wp) as it was.
    Done the same way here, so the numbers are the benchmark's (checked against imagecorruptions' own code)."""
    h_max, w_max = x.shape[0], x.shape[1]
    k = 0
    for _ in range(iterations):
        for h in range(h_max - delta, delta, -1):
            for w in range(w_max - delta, delta, -1):
                dx, dy = offsets[k]
                k += 1
                hp, wp = h + dy, w + dx
                for c in range(x.shape[2]):
                    x[h, w, c] = x[hp, wp, c]


@lru_cache(maxsize=1)
def _glass_jit():
    try:
        import numba
        return numba.njit(cache=True)(_glass_swaps)
    except Exception:  # noqa: BLE001 — numba missing or broken: the plain loop gives the same result, slower
        return _glass_swaps


@lru_cache(maxsize=None)
def _frost_images() -> tuple[np.ndarray, ...]:
    """The reference's six frost photographs, from the imagecorruptions wheel's package data (its code is not
    imported: it no longer imports on this stack)."""
    from PIL import Image
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the frost corruption needs the imagecorruptions package's frost images: "
                           "pip install --no-deps imagecorruptions==1.1.2 (requirements-nodeps.txt)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "frost"
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]
    out = []
    for n in names:
        with Image.open(folder / n) as im:
            out.append(np.asarray(im.convert("RGB")))
    return tuple(out)


# ----------------------------------------------------------------------------- the 15 corruptions
def gaussian_noise(x, c, rng, side):
    x = np.asarray(x) / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, c, rng, side):
    x = np.asarray(x) / 255.0
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(x, c, rng, side):
    from skimage.util import random_noise
    return np.clip(random_noise(np.asarray(x) / 255.0, mode="s&p", amount=c, rng=rng), 0, 1) * 255


def defocus_blur(x, c, rng, side):
    from scipy.ndimage import correlate
    x = np.asarray(x) / 255.0
    kernel = disk(c[0], c[1])
    return np.clip(np.stack([correlate(x[..., d], kernel, mode="mirror") for d in range(3)], -1), 0, 1) * 255


def glass_blur(x, c, rng, side):
    sigma, delta, iterations = c
    x = np.uint8(_gaussian(np.asarray(x) / 255.0, sigma) * 255)
    n = iterations * max(0, x.shape[0] - 2 * delta) * max(0, x.shape[1] - 2 * delta)
    offsets = rng.integers(-delta, delta, size=(n, 2))  # randint(-d, d): +d is never drawn, as in the reference
    _glass_jit()(x, int(delta), int(iterations), offsets)
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def motion_blur(x, c, rng, side):
    return motion(np.asarray(x, np.float64), c[0], c[1], rng.uniform(-45, 45))


def zoom_blur(x, c, rng, side):
    x = (np.asarray(x) / 255.0).astype(np.float32)
    zooms = np.arange(1, c[0], c[1])
    out = np.zeros_like(x)
    for z in zooms:
        out += clipped_zoom(x, z)
    return np.clip((x + out) / (len(zooms) + 1), 0, 1) * 255


def snow(x, c, rng, side):
    x = np.asarray(x, dtype=np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = clipped_zoom(layer[..., None], c[2])
    layer[layer < c[3]] = 0
    layer = np.clip(layer.squeeze(-1), 0, 1)
    layer = np.round(motion(np.round(layer * 255), c[4], c[5], rng.uniform(-135, -45))) / 255.0  # 8-bit, as in the reference
    layer = layer[..., None]
    grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def frost(x, c, rng, side):
    from PIL import Image
    h, w = np.asarray(x).shape[:2]
    img = _frost_images()[int(rng.integers(5))]  # randint(5): the sixth photograph is never drawn, as in the reference
    scale = 0.2 if side < SMALL else side / 224  # the reference: 0.2 for CIFAR's 32 px, 1 for 224 px
    scale = max(scale, 1.05 * h / img.shape[0], 1.05 * w / img.shape[1])  # large enough to crop the image from
    if abs(scale - 1) > 1e-9:
        img = np.asarray(Image.fromarray(img).resize((int(np.ceil(img.shape[1] * scale)), int(np.ceil(img.shape[0] * scale))),
                                                     Image.BILINEAR))
    y0, x0 = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w))
    return np.clip(c[0] * np.asarray(x, np.float64) + c[1] * img[y0:y0 + h, x0:x0 + w], 0, 255)


def fog(x, c, rng, side):
    x = np.asarray(x) / 255.0
    h, w = x.shape[:2]
    top = x.max()
    size = 1 << max(1, (max(h, w) - 1).bit_length())
    x = x + c[0] * plasma_fractal(size, c[1], rng)[:h, :w][..., None]
    return np.clip(x * top / (top + c[0]), 0, 1) * 255


def brightness(x, c, rng, side):
    from skimage.color import hsv2rgb, rgb2hsv
    x = rgb2hsv(np.asarray(x) / 255.0)
    x[..., 2] = np.clip(x[..., 2] + c, 0, 1)
    return np.clip(hsv2rgb(x), 0, 1) * 255


def contrast(x, c, rng, side):
    x = np.asarray(x) / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x, c, rng, side):
    from scipy.ndimage import map_coordinates
    from skimage.transform import AffineTransform, warp
    size = side * (244 / 224 if side >= SMALL else 1)  # the reference's 244 (for 224) and IMSIZE (for 32)
    alpha, sigma, shift = c[0] * size, c[1] * size, c[2] * size
    image = np.asarray(x, dtype=np.float32) / 255.0
    shape = image.shape
    centre = np.float32(shape[:2]) // 2
    square = min(shape[:2]) // 3
    pts1 = np.float32([centre + square, [centre[0] + square, centre[1] - square], centre - square])
    pts2 = pts1 + rng.uniform(-shift, shift, size=pts1.shape).astype(np.float32)
    t = AffineTransform.from_estimate(pts1, pts2)  # the reference hands OpenCV (row, col) pairs as (x, y): kept
    image = warp(image, t.inverse, mode="reflect", order=1, preserve_range=True).astype(np.float32)
    def field():
        noise = rng.uniform(-1, 1, size=shape[:2])
        smooth = _gaussian(noise, sigma, mode="reflect", truncate=3) if sigma > 0 else np.zeros(shape[:2])
        return (smooth * alpha).astype(np.float32)
    dx = field()
    dy = field()
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    out = np.stack([map_coordinates(image[..., d], [yy + dy, xx + dx], order=1, mode="reflect") for d in range(shape[2])], -1)
    return np.clip(out, 0, 1) * 255


def pixelate(x, c, rng, side):
    from PIL import Image
    im = Image.fromarray(np.asarray(x))
    w, h = im.size
    return np.asarray(im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX).resize((w, h), Image.BOX))


def jpeg_compression(x, c, rng, side):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(x)).save(buf, "JPEG", quality=int(c))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))
