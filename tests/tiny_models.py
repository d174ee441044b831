"""The tiny models the unit tests build, in one place: a small simple_cnn spec (the tiny fixture's three
Fashion-MNIST classes at 28 px by default) and the network built from it, seeded."""
import torch

from cvaudit.net.models import build_model
from cvaudit.net.pixel_space import PixelSpace

CLASSES = ["bag", "sneaker", "trouser"]


def tiny_spec(channels=(8, 16), input_size: int = 28, class_names=CLASSES, **kw) -> dict:
    """A simple_cnn spec as a trained checkpoint records it (normalised by 0.5 / 0.5)."""
    return {"arch": "simple_cnn", "arch_options": {"channels": list(channels)}, "weights": "none",
            "input_size": input_size, "num_classes": len(class_names), "class_names": list(class_names),
            "mean": [0.5] * 3, "std": [0.5] * 3, **kw}


def tiny_cnn(seed: int = 0, **kw):
    """(model in eval mode, its spec), weights drawn under `seed`."""
    spec = tiny_spec(**kw)
    torch.manual_seed(seed)
    return build_model(spec).eval(), spec


def pixel_cnn(seed: int = 0, **kw) -> PixelSpace:
    """The tiny CNN in pixel space ([0, 1] images in, its own normalisation inside)."""
    model, spec = tiny_cnn(seed, **kw)
    return PixelSpace(model, spec["mean"], spec["std"]).eval()


def tiny_vit_spec(input_size: int = 32, class_names=CLASSES, **arch_options) -> dict:
    """A timm ViT small enough for a unit test: 8 px patches (a 4 x 4 grid at 32 px), 2 blocks of width 32."""
    opts = {"img_size": input_size, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, **arch_options}
    return {"arch": "timm:vit_tiny_patch16_224", "arch_options": opts, "weights": "none", "input_size": input_size,
            "num_classes": len(class_names), "class_names": list(class_names), "mean": [0.5] * 3, "std": [0.5] * 3}


def pixel_vit(seed: int = 0, **kw) -> PixelSpace:
    spec = tiny_vit_spec(**kw)
    torch.manual_seed(seed)
    return PixelSpace(build_model(spec).eval(), spec["mean"], spec["std"]).eval()
