"""Models that exist only as an export (config key models.*.arch `onnx:FILE` or `torchscript:FILE`), audited as a
black box: images in, logits out, no gradient and no layer to look into.

`ExportedModel` puts the export behind the nn.Module call every stage makes. The file's bytes are kept in the
model's one buffer, so the cvaudit model file (safetensors) holds the export itself and every later job rebuilds
it without the user's file; the runtime is built on first use: onnxruntime (its CUDA provider when the model is
on a GPU and the installed onnxruntime has one, else the CPU, with the job's threads) or torch.jit. The stages
that need gradients or layers ask `is_export` and say why they do not apply (cvaudit.core.registry.EXPORT_REASON).

A TorchScript archive is read by torch.jit.load, whose unpickler only rebuilds TorchScript's own types (no Python
callable); its code is the model's forward, run like the code of an arch python:FILE the user names."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvaudit import CvauditError
from cvaudit.core.registry import EXPORT_KINDS

KEY = "models.*.arch"


def kind_of(arch: str) -> str:
    """'onnx' or 'torchscript' for an export's arch (KeyError otherwise)."""
    return next(k for k in EXPORT_KINDS if arch.startswith(k + ":"))


def file_of(arch: str) -> Path:
    return Path(arch.split(":", 1)[1])


def read_export(arch: str) -> bytes:
    path = file_of(arch)
    if not path.is_file():
        raise CvauditError(f"config key {KEY} '{arch}': file {path} not found; fix the path")
    return path.read_bytes()


def is_export(net: nn.Module) -> bool:
    """A built model (or its pixel-space wrapper) is an export run as a black box."""
    return isinstance(getattr(net, "model", net), ExportedModel)


class ExportedModel(nn.Module):
    """An ONNX or TorchScript classifier: normalised images (N x C x H x W) in, logits (N x classes) out, never a
    gradient. `source` names the file in error messages."""

    def __init__(self, kind: str, data: bytes | None, num_classes: int, input_size: int, source: str = ""):
        super().__init__()
        self.kind, self.num_classes, self.input_size, self.source = kind, num_classes, input_size, source
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
        self.register_buffer("export_bytes", raw)
        self._runner = None
        if data:
            self._runner = self._open("cpu")

    # -- the saved bytes: a cvaudit model file holds the export; loading it replaces the buffer and the runtime
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "export_bytes"
        if key in state_dict:  # sized to the file's export before the copy
            self.export_bytes = torch.empty_like(state_dict[key], dtype=torch.uint8, device="cpu")
            self._runner = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse=True):  # .to(device): the bytes stay in host memory, where the runtime reads them
        kept = self.export_bytes
        out = super()._apply(fn, recurse)
        self.export_bytes = kept
        return out

    def __getstate__(self):  # a copy (copy.deepcopy) reopens the runtime: sessions cannot be copied
        return {**self.__dict__, "_runner": None}

    def _open(self, device: str):
        data = self.export_bytes.cpu().numpy().tobytes()
        if not data:
            raise CvauditError(f"{self.source or 'the exported model'}: no export bytes (a model file written without "
                               "its export); rebuild it with snakemake --forcerun on the model's train_model job")
        runner = _TorchScript(data, device, self.source) if self.kind == "torchscript" else \
            _Onnx(data, device, self.source, self.input_size)
        if getattr(runner, "classes", None) not in (None, self.num_classes):
            raise CvauditError(f"{self.source}: the exported model has {runner.classes} outputs, but models.*.class_names "
                               f"(or the dataset) names {self.num_classes} classes; give its classes in output order "
                               "(models.*.class_names or classes_file)")
        return runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if self._runner is None or self._runner.device != device:
            self._runner = self._open(device)
        with torch.no_grad():
            out = self._runner(x.detach())
        if out.ndim != 2 or out.shape[1] != self.num_classes or out.shape[0] != x.shape[0]:
            raise CvauditError(f"{self.source}: the exported model returns {tuple(out.shape)} for {x.shape[0]} images, "
                               f"not ({x.shape[0]}, {self.num_classes}) logits, one per class in models.*.class_names; "
                               "export the classifier's logits, or fix the class names")
        return out


class _TorchScript:
    def __init__(self, data: bytes, device: str, source: str):
        import warnings
        try:
            with warnings.catch_warnings():  # torch.jit's deprecation notice: the archive is what the user has
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(io.BytesIO(data), map_location=device).eval()
        except Exception as e:  # noqa: BLE001 — a file that is not a TorchScript archive: one clear line
            raise CvauditError(f"{source} is not a TorchScript archive torch.jit.load can read ({type(e).__name__}: "
                               f"{str(e)[:160]}); save it with torch.jit.script(model).save(path) or "
                               f"torch.jit.trace(model, example).save(path) (config key {KEY})") from None
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = out.get("logits", next(iter(out.values())))
        return out.float()


class _Onnx:
    """An onnxruntime session; the input's shape is checked once against models.*.input_size, and a batch
    dimension fixed in the file is met by running that many images at a time."""

    def __init__(self, data: bytes, device: str, source: str, input_size: int):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())  # the job's threads, as torch's
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting beside other jobs
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(data, opts, providers=providers)
        except Exception as e:  # noqa: BLE001 — onnxruntime's own error types: one clear line
            raise CvauditError(f"{source} is not an ONNX model onnxruntime can run ({type(e).__name__}: "
                               f"{str(e)[:200]}); export it with torch.onnx.export (config key {KEY})") from None
        self.device = device
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CvauditError(f"{source}: the ONNX model takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                               "cvaudit gives it one, the batch of images (N x 3 x H x W): export the classifier alone")
        inp = inputs[0]
        shape = list(inp.shape)
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(shape) != 4 or fixed[1] not in (None, 3) or any(d not in (None, input_size) for d in fixed[2:]):
            raise CvauditError(f"{source}: the ONNX model's input '{inp.name}' has shape {shape}, but cvaudit gives it "
                               f"(batch, 3, {input_size}, {input_size}) from config key models.*.input_size; set "
                               "input_size to the size the model was exported for, or export it with that size")
        if inp.type not in ("tensor(float)", "tensor(float16)"):
            raise CvauditError(f"{source}: the ONNX model's input is {inp.type}; cvaudit gives it float images "
                               "(tensor(float) or tensor(float16))")
        self.name, self.dtype = inp.name, np.float16 if inp.type == "tensor(float16)" else np.float32
        self.batch = fixed[0]  # None: any batch size
        outputs = self.session.get_outputs()
        classes = outputs[0].shape[-1] if outputs[0].shape else None
        self.classes = classes if isinstance(classes, int) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.cpu().numpy().astype(self.dtype, copy=False)
        step = self.batch or max(1, len(a))
        parts = []
        for i in range(0, len(a), step):
            chunk = a[i:i + step]
            pad = (step - len(chunk)) if self.batch else 0
            if pad:  # a batch size fixed in the file: the last chunk padded, its padding dropped
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
            y = self.session.run(None, {self.name: np.ascontiguousarray(chunk)})[0]
            parts.append(y[:len(y) - pad])
        out = np.concatenate(parts) if parts else np.zeros((0, self.classes or 0), np.float32)
        return torch.from_numpy(np.asarray(out, np.float32)).to(x.device)
