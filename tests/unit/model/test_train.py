import copy

import pytest
import torch
from safetensors.torch import load_file

from cvaudit.core.files import read_history
from cvaudit.data.ingest_dataset import ingest
from cvaudit.model.train_model import train_model
from cvaudit.net.models import build_model, load_model

TRAIN = {"batch_size": 8, "head_epochs": 0, "finetune_epochs": 0, "lr": 0.01, "finetune_lr": 0.001,
         "weight_decay": 0.0, "patience": 100, "label_smoothing": 0.0, "freeze_bn": True,
         "augment": {"hflip": 0.0, "crop_padding": 0, "translate": 0.0, "rotation": 0, "shear": 0, "erasing": 0.0,
                     "color_jitter": 0.0}}


@pytest.fixture
def manifest(clean_folder, tmp_path):
    ingest({"source": "imagefolder", "path": str(clean_folder), "split": {"val": 0.2, "test": 0.3}}, "t", 0,
           tmp_path / "data")
    return tmp_path / "data" / "manifest.csv"


def _cfg(arch="simple_cnn", weights="none", **train):
    return {"dataset": "t", "arch": arch, "arch_options": {"channels": [8, 16], "dropout": 0.0} if arch == "simple_cnn" else {},
            "weights": weights, "input_size": 28, "train": {**copy.deepcopy(TRAIN), **train}}


def _train(cfg, manifest, out, seed=0):
    out.mkdir(parents=True, exist_ok=True)
    m = train_model("m", cfg, manifest, seed, "cpu", 2, out / "model.safetensors", out / "history.csv", out / "metrics.json")
    return m, read_history(out / "history.csv")


def test_training_learns_and_keeps_the_best_validation_epoch(manifest, tmp_path):
    metrics, hist = _train(_cfg(head_epochs=12), manifest, tmp_path / "a")
    assert [r["phase"] for r in hist] == ["scratch"] * 12
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist[-1]["train_acc"] >= 0.9  # 21 images of three distinct classes
    best = min(hist, key=lambda r: r["val_loss"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["best_val_loss"] == pytest.approx(best["val_loss"])


@pytest.mark.slow
def test_training_is_deterministic_under_a_seed(manifest, tmp_path):
    cfg = _cfg(head_epochs=2, augment={**TRAIN["augment"], "hflip": 0.5, "translate": 0.1, "erasing": 0.3})
    _train(cfg, manifest, tmp_path / "a", seed=5)
    _train(cfg, manifest, tmp_path / "b", seed=5)
    _train(cfg, manifest, tmp_path / "c", seed=6)
    a, b, c = (load_file(str(tmp_path / x / "model.safetensors")) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_transfer_learning_freezes_the_backbone_first(manifest, tmp_path):
    cfg = _cfg("timm:tf_efficientnet_lite0", "packaged:efficientnet_lite0", head_epochs=1, finetune_epochs=1)
    cfg["input_size"] = 32
    metrics, hist = _train(cfg, manifest, tmp_path / "a")
    assert [r["phase"] for r in hist] == ["head", "finetune"]
    # a head-only run leaves every backbone tensor (BatchNorm statistics included) as it was
    head_only = _cfg("timm:tf_efficientnet_lite0", "packaged:efficientnet_lite0", head_epochs=1)
    head_only["input_size"] = 32
    _train(head_only, manifest, tmp_path / "b")
    trained = load_file(str(tmp_path / "b" / "model.safetensors"))
    fresh = build_model({"arch": "timm:tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0",
                         "input_size": 32, "num_classes": 3}).state_dict()
    backbone = [k for k in fresh if not k.startswith("classifier.")]
    assert len(backbone) == 294 and all(torch.equal(trained[k], fresh[k]) for k in backbone)
    assert not torch.equal(trained["classifier.weight"], fresh["classifier.weight"])


def test_train_false_keeps_the_pretrained_imagenet_head(manifest, tmp_path):
    cfg = {"dataset": "t", "arch": "timm:tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0",
           "input_size": 224, "arch_options": {}, "train": False}
    metrics, hist = _train(cfg, manifest, tmp_path / "a")
    model, spec = load_model(tmp_path / "a" / "model.safetensors")
    assert hist == [] and metrics["trained"] is False
    assert spec["num_classes"] == 1000 and spec["class_names"][609] == "jeep" and spec["mean"] == [0.5, 0.5, 0.5]


def test_precise_bn_sets_running_statistics_to_the_training_images_batch_average(clean_folder, tmp_path):
    """Known answer: after precise_bn each BatchNorm's running mean is the mean over the batches of its
    input's batch means, and the model kept in eval mode; the stale statistics of a short training are gone."""
    import numpy as np
    import torch

    from cvaudit.core.manifest import image_loader, read_manifest
    from cvaudit.data.ingest_dataset import ingest
    from cvaudit.model.train_model import precise_bn
    from cvaudit.net.models import build_model
    from cvaudit.net.transforms import eval_transform
    ingest({"source": "imagefolder", "path": str(clean_folder), "split": {"val": 0.0, "test": 0.0}}, "t", 0, tmp_path)
    rows = read_manifest(tmp_path / "manifest.csv", "train")
    spec = {"arch": "simple_cnn", "arch_options": {"channels": [4, 8]}, "weights": "none", "num_classes": 3,
            "input_size": 28, "class_names": ["bag", "sneaker", "trouser"], "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.manual_seed(0)
    model = build_model(spec)
    bn = model.features[1]
    with torch.no_grad():
        bn.running_mean.fill_(7.0)  # stale
    seen = []
    h = bn.register_forward_hook(lambda m, i, o: seen.append(i[0].mean((0, 2, 3)).clone()))
    used = precise_bn(model, image_loader(rows, spec["class_names"], eval_transform(spec), 8, "cpu", True, 0),
                      "cpu")
    h.remove()
    assert used == len(seen) == int(np.ceil(len(rows) / 8)) - (len(rows) % 8 == 1)
    assert torch.allclose(bn.running_mean, torch.stack(seen).mean(0), atol=1e-5)
    assert not model.training and not bn.training and bn.momentum == 0.1


def test_image_loader_decodes_in_the_main_process_on_a_cpu_and_with_pinned_workers_on_a_gpu(monkeypatch):
    """The GPU path: a stage on CUDA gets decoding workers (up to 4, one core left for the main
    process) and pinned memory; on a CPU it decodes in the main process, as the tests' results assume."""
    import os

    from cvaudit.core import manifest
    rows = [{"path": "x.png", "label": "a"}]
    cpu = manifest.image_loader(rows, ["a"], None, 4, "cpu")
    assert cpu.num_workers == 0 and not cpu.pin_memory
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    gpu = manifest.image_loader(rows, ["a"], None, 4, "cuda:0")
    assert gpu.num_workers == 4 and gpu.pin_memory
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert manifest.loader_workers("cuda") == 1 and manifest.loader_workers("cpu") == 0


def test_a_network_with_an_output_per_something_else_is_refused_naming_both_counts(tmp_path):
    """A python: factory that ignores num_classes (5 outputs for 3 classes) would leave probability on outputs
    no class owns: refused when the model is built, naming both counts."""
    from cvaudit import CvauditError
    from cvaudit.model.train_model import check_input_size
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 5))
    with pytest.raises(CvauditError, match=r"models\.m\.arch: the network gives 5 outputs for 3 classes"):
        check_input_size(net, 28, "models.m.input_size", num_classes=3)
    check_input_size(net, 28, "models.m.input_size", num_classes=5)  # one per class: fine
