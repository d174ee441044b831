"""What a model sees: the resize of config key models.*.resize, the evaluation and display transforms,
and training augmentation.

The evaluation and display transforms are torchvision v2's ToImage, Resize (bilinear, antialiased),
CenterCrop, ToDtype and Normalize done with torch alone, in the same operations, so they
give the same bytes (tests/unit/core/test_images.py compares them): importing torchvision costs a job about
two seconds (it loads torch._dynamo), and most jobs transform images but build no torchvision model.
Training augmentation uses torchvision v2, imported when it is built."""
from __future__ import annotations

import numpy as np


def _resized_size(h: int, w: int, spec: dict) -> tuple[int, int]:
    s = spec["input_size"]
    if spec.get("resize", "stretch") != "center_crop":
        return s, s
    short = spec.get("resize_short") or int(round(s / 0.875))  # the shorter side (input_size / 0.875 unless the
    # model's processor says), the longer in proportion
    return (int(short * h / w), short) if w <= h else (short, int(short * w / h))


def _resize_crop(x, spec: dict):
    """A uint8 CHW tensor resized, then center-cropped where configured (config key models.*.resize: stretch
    to input_size x input_size, or center_crop: the shorter side to input_size / 0.875, then the central
    input_size square, as ImageNet models are evaluated). The one resize of training, evaluation and display."""
    import torch
    h, w = x.shape[-2:]
    nh, nw = _resized_size(h, w, spec)
    if (nh, nw) != (h, w):
        x = torch.nn.functional.interpolate(x[None], size=[nh, nw], mode="bilinear", align_corners=False,
                                            antialias=True)[0]  # uint8 in, uint8 out, as torchvision on the CPU
    if spec.get("resize", "stretch") == "center_crop":
        s = spec["input_size"]
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        x = x[..., top:top + s, left:left + s]
    return x


def _view(image, spec: dict):
    """A PIL RGB image as the model's uint8 CHW tensor."""
    import torch
    h, w = image.height, image.width
    x = torch.as_tensor(np.array(image, copy=True)).view(h, w, -1).permute(2, 0, 1)  # HWC memory, as ToImage
    return _resize_crop(x, spec)


class _ResizeCrop:
    """_resize_crop as a step of a torchvision pipeline (after ToImage)."""

    def __init__(self, spec: dict):
        self.spec = spec

    def __call__(self, x):
        return _resize_crop(x, self.spec)


class _Eval:
    def __init__(self, spec: dict):
        import torch
        self.spec = spec
        self.mean = torch.as_tensor(spec["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(spec["std"], dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image):
        import torch
        x = _view(image, self.spec).to(torch.float32).mul_(1.0 / 255)
        return x.sub(self.mean).div_(self.std)


class _Display:
    def __init__(self, spec: dict):
        self.spec = spec

    def __call__(self, image):
        return _view(image, self.spec)


def eval_transform(spec: dict):
    """A PIL RGB image -> the model's normalised float32 CHW input."""
    return _Eval(spec)


def display_transform(spec: dict):
    """The model's view of an image before normalisation, as uint8 (for overlays and audit sets)."""
    return _Display(spec)


def train_transform(spec: dict, aug: dict):
    import torch
    from torchvision.transforms import v2 as T
    s = spec["input_size"]
    ops = [T.ToImage(), _ResizeCrop(spec)]
    if aug.get("hflip", 0) > 0:
        ops.append(T.RandomHorizontalFlip(aug["hflip"]))
    if aug.get("crop_padding", 0) > 0:
        ops.append(T.RandomCrop(s, padding=aug["crop_padding"], padding_mode="reflect"))
    if aug.get("rotation", 0) or aug.get("translate", 0) or aug.get("shear", 0):
        t = aug.get("translate", 0)
        ops.append(T.RandomAffine(degrees=aug.get("rotation", 0), translate=(t, t) if t else None,
                                  shear=aug.get("shear", 0) or None))
    if aug.get("color_jitter", 0) > 0:
        j = aug["color_jitter"]
        ops.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(spec["mean"], spec["std"])]
    if aug.get("erasing", 0) > 0:
        ops.append(T.RandomErasing(p=aug["erasing"]))
    return T.Compose(ops)
