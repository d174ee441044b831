"""Images as a person sees them: decoding checks and the one conversion to 8-bit RGB.

A viewer shows a phone photo upright (EXIF orientation), a 16-bit or float scan over its real
range, a transparent PNG on a page, a CMYK print file through its colour profile. Pillow's plain
`convert("RGB")` does none of these: it ignores orientation, clips 16-bit values at 255, drops the
alpha channel and converts CMYK without the profile. `to_rgb` does all four (Pillow's ImageOps and
ImageCms; numpy for the range). Ingestion converts the images that need it once, so every stage,
figure and report reads the same pixels.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}
EXIF_ORIENTATION = 0x0112


def image_files(folder: str | Path) -> list[str]:
    """Every image file under `folder` (by extension, subfolders too), sorted; hidden files left out."""
    return sorted(str(p) for p in Path(folder).rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file())


def background_rgb(value) -> tuple[int, int, int]:
    """Config key datasets.*.background: white, black, grey, or [r, g, b] in 0..255."""
    if isinstance(value, str):
        return BACKGROUNDS[value]
    return tuple(int(v) for v in value)


def _scaled_to_8bit(a: np.ndarray, bits: int | None) -> np.ndarray:
    """An integer image of `bits` (16) by its bit depth, like a viewer; a float image in [0, 1] times
    255; anything else (a float image beyond [0, 1], 32-bit integers) by its own min..max."""
    a = a.astype(np.float64)
    if bits:
        out = a / (2 ** bits - 1) * 255
    elif a.size and np.nanmin(a) >= 0 and np.nanmax(a) <= 1:
        out = a * 255
    else:
        lo, hi = (np.nanmin(a), np.nanmax(a)) if a.size else (0, 1)
        out = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
    return np.clip(np.nan_to_num(out), 0, 255).round().astype(np.uint8)


def conversions(im: Image.Image) -> list[str]:
    """What to_rgb would change for this image (empty: a plain RGB or greyscale image)."""
    why = []
    orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in (1, None):
        why.append(f"EXIF orientation {orientation}")
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        why.append(f"{im.mode} pixels scaled by their range")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        why.append("alpha composited on the background")
    if im.mode == "CMYK":
        why.append("CMYK converted" + (" with its ICC profile" if im.info.get("icc_profile") else " (no ICC profile)"))
    return why


def to_rgb(im: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """8-bit RGB as a person sees the image: upright, over its real range, on a background, in sRGB."""
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        bits = 16 if mode.startswith("I;16") else None
        arr = np.asarray(im)
        if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            bits = 16 if arr.max() > 255 else 8
        return Image.fromarray(_scaled_to_8bit(arr, bits)).convert("RGB")
    if mode == "CMYK" and im.info.get("icc_profile"):
        from PIL import ImageCms
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):  # a broken profile: the plain conversion below
            pass
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "PA", "La"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        page = Image.new("RGB", im.size, tuple(background))
        page.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        return page
    return im.convert("RGB")


def load_rgb(path: str | Path, background=(255, 255, 255)) -> Image.Image:
    """An image file as 8-bit RGB, as a person sees it (see to_rgb). Manifest paths point to files
    ingestion already converted, so this is a plain read for them."""
    with Image.open(path) as im:
        return to_rgb(im, background)


def check_image(path: Path) -> tuple[dict | None, str | None]:
    """Open and fully decode an image. Return (info, None) or (None, reason it was rejected). info:
    width and height as a person sees the image (after EXIF orientation), mode, and the conversions
    it needs."""
    try:
        if path.is_symlink() and not path.exists():
            return None, "a symbolic link that cannot be followed (a loop, or its target is gone)"
        if not path.exists():
            return None, "file not found"
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        if path.suffix.lower() not in IMAGE_EXTS:
            return None, f"not an image extension ({path.suffix or 'none'}); use one of {', '.join(IMAGE_EXTS)}"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.verify()  # structure and checksums
            with Image.open(path) as im:
                im.load()  # full decode: catches truncated files
                w, h, mode, why = im.width, im.height, im.mode, conversions(im)
                if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                    w, h = h, w
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        return None, f"cannot be decoded as an image: {type(e).__name__}: {e}"
    if w < 2 or h < 2:
        return None, f"too small ({w}x{h} px)"
    return {"width": w, "height": h, "mode": mode, "converted": "; ".join(why)}, None
