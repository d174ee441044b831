import glob
import os

import pytest
import torch

from cvaudit import CvauditError
from cvaudit.core.images import load_rgb
from cvaudit.data.sources import foolbox_dir, imagenet_categories
from cvaudit.net.models import build_model, load_model, normalisation, read_spec, save_model
from cvaudit.net.transforms import eval_transform


def _spec(**kw):
    s = {"arch": "simple_cnn", "arch_options": {"channels": [8, 16]}, "weights": "none", "input_size": 32,
         "num_classes": 3, "class_names": ["a", "b", "c"], "keep_head": False}
    s.update(kw)
    return s


def test_packaged_lite0_classifies_real_imagenet_photos():
    spec = _spec(arch="timm:tf_efficientnet_lite0", weights="packaged:efficientnet_lite0", input_size=224,
                 num_classes=1000, class_names=imagenet_categories(), keep_head=True, arch_options={})
    model = build_model(spec).eval()
    spec["mean"], spec["std"] = normalisation(spec, model)
    files = sorted(glob.glob(str(foolbox_dir() / "imagenet_*.jpg")))
    x = torch.stack([eval_transform(spec)(load_rgb(f)) for f in files])
    labels = torch.tensor([int(f.rsplit("_", 1)[1][:-4]) for f in files])
    with torch.no_grad():
        correct = (model(x).argmax(1) == labels).sum().item()
    assert correct >= 16, f"{correct}/20"  # 17/20 measured; random weights would get ~0


def test_head_is_replaced_for_new_classes():
    m = build_model(_spec(arch="timm:tf_efficientnet_lite0", weights="packaged:efficientnet_lite0", arch_options={}))
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    tv = build_model(_spec(arch="torchvision:resnet18", arch_options={}))
    assert tv(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert build_model(_spec(arch="mlp", arch_options={"hidden": [16]}))(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("arch, words", [("timm:no_such_net", "unknown timm architecture"),
                                         ("torchvision:no_such_net", "unknown torchvision architecture"),
                                         ("keras:vgg", "unknown architecture")])
def test_unknown_arch_is_a_clear_error(arch, words):
    with pytest.raises(CvauditError, match=words):
        build_model(_spec(arch=arch, arch_options={}))


@pytest.mark.parametrize("arch, weights", [("timm:tf_efficientnet_lite0", "packaged:resnet50"),
                                           ("torchvision:resnet18", "packaged:efficientnet_lite0")])
def test_packaged_weights_never_silently_fall_back_to_random(arch, weights):
    with pytest.raises(CvauditError, match="only packaged weights"):
        build_model(_spec(arch=arch, weights=weights, arch_options={}))


def test_missing_or_pickled_weights_are_refused(tmp_path):
    with pytest.raises(CvauditError, match="not found"):
        build_model(_spec(weights=str(tmp_path / "nope.pt")))

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CvauditError, match="not a plain tensor checkpoint"):
        build_model(_spec(weights=str(tmp_path / "evil.pt")))
    assert not (tmp_path / "pwned").exists()


def test_local_weights_load_and_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    a = build_model(_spec()).eval()
    torch.save(a.state_dict(), tmp_path / "a.pt")
    b = build_model(_spec(weights=str(tmp_path / "a.pt"))).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    spec = {**_spec(), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    save_model(a, spec, tmp_path / "m.safetensors")
    c, spec2 = load_model(tmp_path / "m.safetensors")
    assert spec2["class_names"] == ["a", "b", "c"] and read_spec(tmp_path / "m.safetensors") == spec2
    assert torch.equal(a(x), c(x))
    d = build_model(_spec(weights=str(tmp_path / "m.safetensors"))).eval()
    assert torch.equal(a(x), d(x))


def test_weights_of_another_arch_are_refused(tmp_path):
    torch.save(build_model(_spec()).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(CvauditError, match="do not fit"):
        build_model(_spec(arch="mlp", arch_options={}, weights=str(tmp_path / "cnn.pt")))
