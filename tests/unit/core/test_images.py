"""Images read as a person sees them: EXIF orientation, 16-bit and float range, alpha, CMYK with its
profile. Each case is a real file written here from a real Fashion-MNIST image, then ingested."""
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from cvaudit.core.images import check_image, load_rgb

from conftest import TINY

CMYK_ICC = Path("/usr/share/color/icc/ghostscript/default_cmyk.icc")  # Debian libgs-common (tools/setup.sh)


@pytest.fixture(scope="module")
def fm() -> np.ndarray:
    """A real Fashion-MNIST image (28 x 28 grey, uint8), from the committed fixture."""
    return np.asarray(Image.open(sorted(TINY.glob("bag/fm*.png"))[0]).convert("L"))


def test_16_bit_greyscale_keeps_its_brightness(tmp_path, fm):
    p = tmp_path / "sixteen.png"
    Image.fromarray(fm.astype(np.uint16) * 257).save(p)  # the same picture, 16 bits per pixel
    with Image.open(p) as im:
        assert im.mode.startswith("I")  # Pillow reads it as 16/32-bit integers
        naive = np.asarray(im.convert("RGB"))
    ours = np.asarray(load_rgb(p))
    assert np.abs(ours[..., 0].astype(int) - fm).max() <= 1  # the person's view: the original image
    assert naive.mean() > fm.mean() + 50  # what convert("RGB") gives: clipped to white
    assert "scaled by their range" in check_image(p)[0]["converted"]


def test_float_images_in_0_1_are_scaled_to_255(tmp_path, fm):
    p = tmp_path / "float.tif"
    Image.fromarray(fm.astype(np.float32) / 255).save(p)
    assert np.abs(np.asarray(load_rgb(p))[..., 1].astype(int) - fm).max() <= 1


def test_exif_orientation_is_applied_and_the_manifest_size_is_upright(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)  # stored landscape, 40 wide
    img[:6, :6] = 255  # a white mark in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display", as phones write it
    p = tmp_path / "phone.jpg"
    Image.fromarray(img).save(p, exif=exif, quality=95)
    ours = np.asarray(load_rgb(p))
    assert ours.shape[:2] == (40, 20)  # shown portrait
    assert ours[:6, -6:].mean() > 200 and ours[:6, :6].mean() < 50  # the mark is now top-right
    info, _ = check_image(p)
    assert (info["width"], info["height"]) == (20, 40) and "EXIF orientation 6" in info["converted"]


def test_transparent_pixels_take_the_background_not_their_hidden_colour(tmp_path, fm):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 0] = 255  # hidden colour: pure red
    rgba[..., 3] = (fm > 0) * 255  # only the garment is opaque
    rgba[fm > 0, :3] = np.stack([fm[fm > 0]] * 3, -1)
    p = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(p)
    white, black = np.asarray(load_rgb(p)), np.asarray(load_rgb(p, (0, 0, 0)))
    clear = fm == 0
    assert (white[clear] == 255).all() and (black[clear] == 0).all()  # never red
    assert (white[~clear, 0] == fm[~clear]).all()
    with Image.open(p) as im:
        assert (np.asarray(im.convert("RGB"))[clear] == [255, 0, 0]).all()  # what convert("RGB") shows
    pal = tmp_path / "palette.png"  # a palette image with a transparent index
    Image.fromarray(rgba, "RGBA").quantize(16).save(pal)
    assert np.asarray(load_rgb(pal))[clear].min() > 200


@pytest.mark.skipif(not CMYK_ICC.exists(), reason="needs Debian libgs-common (tools/setup.sh installs it)")
def test_cmyk_is_converted_through_its_embedded_profile(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8, 0] = 255  # cyan on the left, magenta + yellow (red) on the right
    cmyk[:, 8:, 1:3] = 255
    p = tmp_path / "print.jpg"
    Image.fromarray(cmyk, "CMYK").save(p, icc_profile=CMYK_ICC.read_bytes(), quality=100)
    ours = np.asarray(load_rgb(p)).astype(int)
    with Image.open(p) as im:
        ref = np.asarray(ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(str(CMYK_ICC)),
                                                   ImageCms.createProfile("sRGB"), outputMode="RGB")).astype(int)
        naive = np.asarray(im.convert("RGB")).astype(int)
        assert "with its ICC profile" in " ".join([check_image(p)[0]["converted"]])
    assert np.abs(ours - ref).max() <= 2
    assert np.abs(naive - ref).mean() > 10  # the profile changes what a person sees
    left, right = ours[:, :4].mean((0, 1)), ours[:, 12:].mean((0, 1))
    assert left[2] > left[0] + 100 and right[0] > right[2] + 100  # cyan reads blue-ish, red reads red


def test_ingestion_converts_once_and_the_manifest_names_each_original(tmp_path, fm):
    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.ingest_dataset import ingest
    root = tmp_path / "imgs"
    for c in ("bag", "sneaker"):
        (root / c).mkdir(parents=True)
        for k, src in enumerate(sorted(TINY.glob(f"{c}/fm*.png"))[:4]):
            (root / c / f"plain{k}.png").write_bytes(src.read_bytes())
    Image.fromarray(fm.astype(np.uint16) * 257).save(root / "bag" / "sixteen.png")
    rgba = np.dstack([np.stack([fm] * 3, -1), (fm > 0).astype(np.uint8) * 255])
    Image.fromarray(rgba, "RGBA").save(root / "sneaker" / "alpha.png")
    info = ingest({"source": "imagefolder", "path": str(root), "split": {"val": 0.0, "test": 0.5},
                   "background": "black"}, "t", 0, tmp_path / "out")
    rows = {Path(r["original"]).name: r for r in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert info["n_converted"] == 2 and info["background"] == [0, 0, 0]
    assert rows["plain0.png"]["path"] == rows["plain0.png"]["original"] and rows["plain0.png"]["converted"] == ""
    for name in ("sixteen.png", "alpha.png"):
        r = rows[name]
        assert r["converted"] and Path(r["path"]).parent.parent.name == "converted"
        with Image.open(r["path"]) as im:
            assert im.mode == "RGB"
            assert np.abs(np.asarray(im)[..., 0].astype(int) - fm).max() <= 1  # black background = fm's zeros
    with open(tmp_path / "out" / "manifest.csv", newline="") as f:
        assert "original" in next(csv.reader(f))


@pytest.mark.parametrize("resize", ["stretch", "center_crop"])
def test_the_torch_transforms_give_torchvisions_bytes(resize):
    """The evaluation, display and (unaugmented) training transforms equal torchvision v2's pipeline
    (ToImage, Resize antialiased, CenterCrop, ToDtype, Normalize) byte for byte: real photos and a
    Fashion-MNIST garment, down- and upsampled, square, portrait, landscape, and already at the model's size."""
    import torch
    from skimage import data
    from torchvision.transforms import v2 as T

    from cvaudit.net.transforms import display_transform, eval_transform, train_transform
    garment = Image.open(sorted(TINY.glob("bag/fm*.png"))[0]).convert("RGB")
    photo = Image.fromarray(data.astronaut())  # 512 x 512
    images = [garment, photo, photo.crop((0, 0, 300, 451)), photo.crop((7, 20, 500, 233)), garment.resize((29, 64))]
    for size in (28, 32, 224):
        s = round(size / 0.875)
        ops = [T.Resize(s, antialias=True), T.CenterCrop(size)] if resize == "center_crop" else \
            [T.Resize((size, size), antialias=True)]
        spec = {"input_size": size, "resize": resize, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        show = T.Compose([T.ToImage(), *ops])
        norm = T.Compose([T.ToImage(), *ops, T.ToDtype(torch.float32, scale=True), T.Normalize(spec["mean"], spec["std"])])
        for im in images:
            ours, theirs = display_transform(spec)(im), show(im)
            assert ours.dtype == torch.uint8 and ours.shape == (3, size, size)
            assert torch.equal(ours, theirs.as_subclass(torch.Tensor)), (size, im.size)
            assert torch.equal(eval_transform(spec)(im), norm(im).as_subclass(torch.Tensor)), (size, im.size)
            assert torch.equal(train_transform(spec, {})(im).as_subclass(torch.Tensor),
                               norm(im).as_subclass(torch.Tensor)), (size, im.size)
