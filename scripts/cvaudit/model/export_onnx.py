"""The export_onnx stage: a cvaudit model file as an ONNX file, so a model trained here can be handed over, or audited
beside its own export as a black box (arch onnx:FILE, cvaudit.net.export)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from cvaudit import CvauditError
from cvaudit.core.files import atomic_path
from cvaudit.net.export import ExportedModel
from cvaudit.net.models import load_model

TOLERANCE = 1e-3  # largest logit difference from the torch model an export may show and be kept


def write_onnx(model_path, out, opset: int = 17) -> dict:
    """The network as it takes normalised images (N x 3 x S x S, any N), logits out, checked against the torch
    model on seeded images before it is kept. Audit it with arch onnx:FILE, the spec's normalisation and classes."""
    model, spec = load_model(model_path)
    s = spec["input_size"]
    x = torch.rand(4, 3, s, s, generator=torch.Generator().manual_seed(0))
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.onnx's notices about its exporters
        try:
            torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=["logits"], opset_version=opset,
                              dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
        except Exception as e:  # noqa: BLE001 — an operator ONNX lacks, or a model torch.onnx cannot trace
            raise CvauditError(f"{model_path}: torch.onnx cannot export this model ({type(e).__name__}: "
                               f"{str(e)[:200]})") from None
        export = ExportedModel("onnx", Path(tmp).read_bytes(), spec["num_classes"], s, source=str(out))
        with torch.no_grad():
            gap = float((export(x) - model(x)).abs().max())
        if gap > TOLERANCE:
            raise CvauditError(f"{out}: the ONNX export's logits differ from the model's by {gap:.2g}; not kept")
    return {"input_size": s, "class_names": spec["class_names"], "mean": spec["mean"], "std": spec["std"],
            "max_logit_difference": gap}
