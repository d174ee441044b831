"""What a model sees: the resize of config key models.*.resize, the evaluation and display transforms,
and training augmentation (torchvision v2, imported when a transform is built: importing torchvision
costs a job over a second, and the jobs that only import this module's names need none)."""
from __future__ import annotations


def resize_ops(spec: dict) -> list:
    """config key models.*.resize: stretch (to input_size x input_size) or center_crop (shorter side to
    input_size / 0.875, then the central input_size square, as ImageNet models are evaluated)."""
    from torchvision.transforms import v2 as T
    s = spec["input_size"]
    if spec.get("resize", "stretch") == "center_crop":
        return [T.Resize(int(round(s / 0.875)), antialias=True), T.CenterCrop(s)]
    return [T.Resize((s, s), antialias=True)]


def eval_transform(spec: dict):
    import torch
    from torchvision.transforms import v2 as T
    return T.Compose([T.ToImage(), *resize_ops(spec), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(spec["mean"], spec["std"])])


def display_transform(spec: dict):
    """The model's view of an image before normalisation, as uint8 (for overlays and audit sets)."""
    from torchvision.transforms import v2 as T
    return T.Compose([T.ToImage(), *resize_ops(spec)])


def train_transform(spec: dict, aug: dict):
    import torch
    from torchvision.transforms import v2 as T
    s = spec["input_size"]
    ops = [T.ToImage(), *resize_ops(spec)]
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
