"""The model's view of an image, shared by every stage that runs a model: pixel space ([0, 1], N x 3 x H x W)
with the normalisation inside the network, a stage's start (seed, device, load, wrap), the class
probability in batches, the uint8 -> [0, 1] conversion, the blur the methods and trust checks use,
and the one per-image random generator (an image's draws never depend on its batch or shard)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cvaudit.core.manifest import image_loader
from cvaudit.net.models import auto_batch, load_model, resolve_device
from cvaudit.net.transforms import eval_transform


class PixelSpace(nn.Module):
    """The model with its input normalisation in front: takes images in [0, 1]."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def seed_everything(seed: int, threads: int | None = None) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    deterministic()


def deterministic() -> None:
    """torch.use_deterministic_algorithms(True, warn_only=True), without the import of torch._inductor's
    config that it makes to set the same flag for torch.compile (which cvaudit does not use): that import
    pulls in torch._dynamo, over a second of every job's start on a 2-core machine."""
    import sys
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def start_stage(model_path, seed: int, device: str, threads: int):
    """A stage's start: seed everything, load the saved model on the device. Returns model, spec, device."""
    seed_everything(seed, threads)
    dev = resolve_device(device)
    model, spec = load_model(model_path, dev)
    return model, spec, dev


def pixel_model(model_path, seed: int, device: str, threads: int, frozen: bool = False):
    """start_stage, with the model wrapped in PixelSpace (it takes images in [0, 1]). frozen: no parameter
    needs a gradient (only the input does). Returns model, spec, net, device."""
    model, spec, dev = start_stage(model_path, seed, device, threads)
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    return model, spec, PixelSpace(model, spec["mean"], spec["std"]).to(dev).eval(), dev


def inner(net: nn.Module) -> nn.Module:
    return net.model if isinstance(net, PixelSpace) else net


@torch.no_grad()
def class_probability(net: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Softmax probability of `target` (one class per image, broadcast if one) in batches."""
    out = [torch.zeros(0, device=x.device)]  # no images (an empty shard): no probabilities
    for i in range(0, len(x), batch_size):
        p = torch.softmax(net(x[i:i + batch_size]).float(), 1)
        t = target[i:i + batch_size] if target.numel() > 1 else target.expand(len(p))
        out.append(p.gather(1, t.view(-1, 1))[:, 0])
    return torch.cat(out)


def audit_images(audit: dict, device, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """The audit set's uint8 images [start, stop) as a pixel-space batch in [0, 1] (only those are
    converted: the stages stream a large audit set through in chunks)."""
    return torch.from_numpy(audit["images"][start:stop]).to(device).permute(0, 3, 1, 2).float().div(255)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF
    k = int(2 * round(3 * sigma) + 1)
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def image_seed(seed: int, index: int) -> int:
    """The one per-image seeding formula: image (or batch, or family) `index` under `seed`. Every draw
    keyed by it is the same whatever else shares its batch or shard, so sharded runs equal unsharded ones."""
    return seed * 1_000_003 + int(index)


def image_generator(seed: int, index: int) -> torch.Generator:
    """A generator of its own for image `index` of a sample (see image_seed)."""
    return torch.Generator().manual_seed(image_seed(seed, index))


@torch.no_grad()
def predict(net, x01: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its probability for images in [0, 1], in batches."""
    preds, conf = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0)]  # an empty shard has none
    for i in range(0, len(x01), batch):
        p = torch.softmax(net(x01[i:i + batch]).float(), 1)
        c, q = p.max(1)
        preds.append(q.cpu())
        conf.append(c.cpu())
    return torch.cat(preds), torch.cat(conf)


@torch.no_grad()
def predict_proba(model, rows, spec, device, batch_size: int | str = "auto") -> np.ndarray:
    """Softmax probabilities for `rows`, streamed from disk in batches: (N, num_classes)."""
    batch_size = auto_batch(spec["input_size"], spec["input_size"], device, batch_size)
    out = []
    for x, _ in image_loader(rows, spec["class_names"], eval_transform(spec), batch_size, device):
        out.append(torch.softmax(model(x.to(device, non_blocking=True)).float(), 1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, spec["num_classes"]), np.float32)
