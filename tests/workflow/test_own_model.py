"""Audit a model you already trained: a torchvision ResNet-18 and a user's own nn.Module, trained here in
plain PyTorch with their own class order and normalisation, saved as .pt and .safetensors, and the module
exported to ONNX and TorchScript. The audit must reproduce the script's own test predictions and accuracy; a
checkpoint that does not fit is an error naming the tensors, never a silently random head. The ONNX export is
audited end to end as a black box: what needs only its outputs runs, what needs gradients or layers says why not."""
import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.transforms import v2 as T

from cvaudit import CvauditError

from conftest import REPO, fit, smk

pytestmark = pytest.mark.e2e  # runs the workflow through snakemake

ORDER = ["trouser", "bag", "sneaker"]  # not the sorted folder order (bag, sneaker, trouser)
MEAN, STD = [0.3, 0.3, 0.3], [0.35, 0.35, 0.35]
SIZE = 32
USER_FILE = '''import torch.nn as nn


def make(num_classes, width=8):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(width * 16, num_classes))
'''


def _prep(path):
    """The user's own preprocessing, written out: resize, scale to [0, 1], normalise."""
    tf = T.Compose([T.ToImage(), T.Resize((SIZE, SIZE), antialias=True), T.ToDtype(torch.float32, scale=True),
                    T.Normalize(MEAN, STD)])
    with Image.open(path) as im:
        return tf(im.convert("RGB"))


def _train(net, x, y, steps=60, lr=0.01):
    torch.manual_seed(0)
    return fit(net, x, y, steps=steps, lr=lr)


@pytest.fixture(scope="module")
def own(tmp_path_factory, clean_images):
    import torchvision
    from safetensors.torch import save_file
    work = tmp_path_factory.mktemp("own")
    paths = sorted(clean_images.glob("*/*.png"))
    x = torch.stack([_prep(p) for p in paths])
    y = torch.tensor([ORDER.index(p.parent.name) for p in paths])
    torch.manual_seed(0)
    resnet = _train(torchvision.models.resnet18(num_classes=3), x, y, steps=30, lr=0.001)
    torch.save(resnet.state_dict(), work / "resnet.pt")
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(work / "resnet.safetensors"))
    (work / "net.py").write_text(USER_FILE)
    ns = {}
    exec(USER_FILE, ns)
    torch.manual_seed(0)
    mine = _train(ns["make"](3), x, y)
    torch.save(mine.state_dict(), work / "mine.pt")
    (work / "classes.txt").write_text("\n".join(ORDER) + "\n")
    example = x[:2]
    torch.onnx.export(mine.eval(), (example,), str(work / "mine.onnx"), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    torch.jit.trace(mine, example).save(str(work / "mine_ts.pt"))
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = str(clean_images)
    common = {"dataset": "tiny", "train": False, "input_size": SIZE, "normalisation": {"mean": MEAN, "std": STD}}
    cfg["models"] = {
        "resnet_pt": {**common, "arch": "torchvision:resnet18", "weights": str(work / "resnet.pt"), "class_names": ORDER},
        "resnet_st": {**common, "arch": "torchvision:resnet18", "weights": str(work / "resnet.safetensors"),
                      "classes_file": str(work / "classes.txt")},
        "mine": {**common, "arch": f"python:{work / 'net.py'}:make", "weights": str(work / "mine.pt"),
                 "class_names": ORDER},
        "mine_onnx": {**common, "arch": f"onnx:{work / 'mine.onnx'}", "class_names": ORDER},
        "mine_ts": {**common, "arch": f"torchscript:{work / 'mine_ts.pt'}", "classes_file": str(work / "classes.txt")},
    }
    # the export's whole audit: two methods of each kind, one invariance family, its own corruption reference
    cfg["explain"]["methods"] = ["saliency", "gradcam", "occlusion", "lime"]
    cfg["robustness"]["invariance"] = {"translate": [0, 0.1]}
    cfg["robustness"]["corruptions"]["reference"] = {"tiny": "mine_onnx"}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = [f"results/{m}/eval/metrics.json" for m in cfg["models"]] + ["results/mine_onnx/report/summary.json"]
    smk(work, *targets, "--configfile", str(work / "config.yaml"))
    return work, {"resnet_pt": resnet, "resnet_st": resnet, "mine": mine, "mine_onnx": mine, "mine_ts": mine}


@pytest.fixture(scope="module")
def clean_images(tmp_path_factory):
    from conftest import TINY
    dst = tmp_path_factory.mktemp("clean")
    for p in TINY.glob("*/fm*.png"):
        (dst / p.parent.name).mkdir(parents=True, exist_ok=True)
        (dst / p.parent.name / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("model", ["resnet_pt", "resnet_st", "mine", "mine_onnx", "mine_ts"])
def test_the_audit_reproduces_the_scripts_own_predictions_and_accuracy(own, model):
    work, nets = own
    with open(work / "results" / model / "eval" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 10
    with torch.no_grad():
        logits = nets[model](torch.stack([_prep(r["path"]) for r in rows]))
    theirs = [ORDER[i] for i in logits.argmax(1).tolist()]
    assert [r["pred_label"] for r in rows] == theirs
    acc = np.mean([t == r["label"] for t, r in zip(theirs, rows)])
    metrics = json.loads((work / "results" / model / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(acc) and acc > 0.5  # a trained head, not a random one
    probs = torch.softmax(logits, 1).max(1).values.numpy()
    assert np.allclose([float(r["confidence"]) for r in rows], probs, atol=1e-5)


def test_a_checkpoint_that_does_not_fit_is_an_error_naming_the_tensors(own):
    from cvaudit.model.train_model import make_spec
    from cvaudit.net.models import build_model
    work, _ = own
    cfg = {"arch": "torchvision:resnet18", "weights": str(work / "resnet.pt"), "train": False, "input_size": SIZE}
    # the reported bug: 5 dataset classes, a 3-class checkpoint, no class_names: once a random 1000-class head
    spec = make_spec(cfg, ["a", "b", "c", "d", "e"])
    with pytest.raises(CvauditError, match=r"fc\.weight \(3, 512\) \(the model has \(5, 512\)\).*class_names"):
        build_model(spec)
    with pytest.raises(CvauditError, match=r"class_names / classes_file name the outputs of a model audited as it is"):
        make_spec({**cfg, "train": {}, "class_names": ORDER}, ORDER)
    wrong = {**cfg, "arch": "torchvision:resnet34", "class_names": ORDER}
    with pytest.raises(CvauditError, match=r"missing from the file: layer1\.2\."):
        build_model(make_spec(wrong, ORDER))


def test_a_dataset_label_the_model_cannot_output_is_a_clear_error(own, tmp_path):
    work, _ = own
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["models"] = {"two": {**cfg["models"]["resnet_pt"], "class_names": ["trouser", "bag", "coat"]}}
    cfg["robustness"]["corruptions"]["reference"] = {}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    p = smk(tmp_path, "results/two/eval/metrics.json", "--configfile", str(tmp_path / "c.yaml"), check=False)
    assert p.returncode != 0 and "does not know dataset classes ['sneaker']" in p.stdout + p.stderr


def test_an_export_is_audited_as_a_black_box_and_says_what_it_cannot_show(own):
    work, _ = own
    summary = json.loads((work / "results" / "mine_onnx" / "report" / "summary.json").read_text())
    html = (work / "results" / "mine_onnx" / "report" / "report.html").read_text()
    assert summary["failed_stages"] == []
    assert summary["provenance"]["weights"].endswith("mine.onnx")
    maps = {m: np.load(work / "results" / "mine_onnx" / "explain" / m / "maps.npz") for m in ("occlusion", "lime")}
    assert all(np.isfinite(a["maps_pred"]).all() and a["maps_pred"].std() > 0 for a in maps.values())
    assert set(summary["attributions"]) == {"occlusion", "lime"}  # the gradient-free methods, judged
    for method in ("Vanilla gradient", "Grad-CAM"):  # listed as not applicable, with the reason
        assert f"{method}: not applicable to this model: the model is an export without gradients" in html, method
    sanity = {v["method"]: v["status"] for v in summary["verdicts"] if v["check"] == "sanity_similarity"}
    assert sanity == {"occlusion": "n/a", "lime": "n/a"}  # no parameters to randomise
    assert list(summary["robustness"]["adversarial"]) == ["square"]  # in place of fgsm, pgd and autoattack
    assert summary["robustness"]["adversarial"]["square"]["n"] == 8
    assert "the accuracy under attack here is an upper bound" in html
    for section in ("representations", "units", "layers"):
        body = html.split(f'<section id="{section}">')[1].split("</section>")[0]
        assert "Not applicable: the model is an export without gradients" in body
    assert summary["representation"] is None and summary["clever_hans"]["method"] == "occlusion"
    assert "preprocessing" in json.loads((work / "results" / "mine_onnx" / "train" / "metrics.json").read_text())
