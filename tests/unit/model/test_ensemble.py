"""arch: ensemble — members of one dataset audited as one model: the average of their probabilities, gradients
through the average, no view that silently uses one member's layers, and a config that refuses what cannot be
averaged."""
import copy

import numpy as np
import pytest
import torch

from cvaudit import CvauditError
from cvaudit.config import validate_config
from cvaudit.explain.methods import NotApplicable, get_method
from cvaudit.model.ensemble import assemble
from cvaudit.net.models import Ensemble, _head_name, load_model, save_model
from cvaudit.net.pixel_space import PixelSpace

from tiny_models import tiny_spec


def _members(tmp_path, specs=None):
    paths = {}
    for i, spec in enumerate(specs or [tiny_spec(), tiny_spec(arch="mlp", arch_options={"hidden": [16]})]):
        torch.manual_seed(i)
        from cvaudit.net.models import build_model
        model = build_model(spec).eval()
        spec = {**spec, "mean": [0.5 - 0.1 * i] * 3, "std": [0.5 + 0.1 * i] * 3}  # each its own normalisation
        paths[f"m{i}"] = tmp_path / f"m{i}.safetensors"
        save_model(model, spec, paths[f"m{i}"])
    return paths


def test_the_ensemble_outputs_the_log_of_its_members_mean_probability(tmp_path):
    paths = _members(tmp_path)
    assemble("ens", {"input_size": 28}, paths, tmp_path / "ens.safetensors", tmp_path / "h.csv", tmp_path / "m.json")
    ens, spec = load_model(tmp_path / "ens.safetensors")  # rebuilt from its file alone
    assert isinstance(ens, Ensemble) and spec["mean"] == [0.0] * 3 and [m["member"] for m in spec["members"]] == ["m0", "m1"]
    x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    expected = []
    for p in paths.values():
        member, mspec = load_model(p)
        net = PixelSpace(member, mspec["mean"], mspec["std"]).eval()
        expected.append(torch.softmax(net(x), 1))
    with torch.no_grad():
        got = torch.softmax(ens(x), 1)
    assert torch.allclose(got, torch.stack(expected).mean(0).detach(), atol=1e-6)
    assert not torch.allclose(got, expected[0].detach(), atol=1e-3)  # both members count


def test_gradient_methods_explain_the_average_and_layer_methods_refuse(tmp_path):
    paths = _members(tmp_path)
    assemble("ens", {"input_size": 28}, paths, tmp_path / "ens.safetensors", tmp_path / "h.csv", tmp_path / "m.json")
    ens, spec = load_model(tmp_path / "ens.safetensors")
    net = PixelSpace(ens, spec["mean"], spec["std"]).eval()
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 2])
    x_ = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(torch.log_softmax(net(x_), 1).gather(1, t[:, None]).sum(), x_)
    sal = get_method("saliency").attribute(net, x, t)
    assert torch.allclose(sal, g.abs().amax(1), atol=1e-6)  # the gradient of the average's own score
    for name in ("gradcam", "cam", "guided_gradcam", "lrp"):
        with pytest.raises(NotApplicable, match="ensemble"):
            get_method(name).attribute(net, x, t)
    with pytest.raises(CvauditError, match="no single classifier head"):
        _head_name(ens)


def test_the_representation_of_an_ensemble_is_its_members_side_by_side(tmp_path, tiny_copy):
    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.ingest_dataset import ingest
    from cvaudit.net.features import stream_features
    from cvaudit.represent.represent import pick_layers
    paths = _members(tmp_path)
    assemble("ens", {"input_size": 28}, paths, tmp_path / "ens.safetensors", tmp_path / "h.csv", tmp_path / "m.json")
    ens, spec = load_model(tmp_path / "ens.safetensors")
    ingest({"source": "imagefolder", "path": str(tiny_copy)}, "t", 0, tmp_path / "data")
    rows = read_manifest(tmp_path / "data" / "manifest.csv", "test")
    assert pick_layers(ens, 6) == []  # its layers are its members'
    f = stream_features(ens, rows, spec, "cpu", [], batch_size=4)
    assert f["embeddings"].shape == (len(rows), 16 + 16)  # the CNN's 16 channels beside the MLP's 16 units
    assert np.allclose(f["probs"].sum(1), 1, atol=1e-5)


def test_members_must_name_the_same_classes_in_the_same_order(tmp_path):
    paths = _members(tmp_path, [tiny_spec(), tiny_spec(class_names=["sneaker", "bag", "trouser"])])
    with pytest.raises(CvauditError, match="members: m1 and m0 name different classes"):
        assemble("ens", {"input_size": 28}, paths, tmp_path / "e.safetensors", tmp_path / "h.csv", tmp_path / "m.json")
    paths = _members(tmp_path, [tiny_spec(), tiny_spec(input_size=32)])
    with pytest.raises(CvauditError, match="input_size"):
        assemble("ens", {"input_size": 28}, paths, tmp_path / "e.safetensors", tmp_path / "h.csv", tmp_path / "m.json")


def _config(**ens):
    model = {"dataset": "d", "arch": "simple_cnn", "input_size": 28}
    return {"datasets": {"d": {"source": "imagefolder", "path": "x"}, "e": {"source": "imagefolder", "path": "y"}},
            "models": {"a": dict(model), "b": dict(model), "c": {**model, "dataset": "e"},
                       "ens": {"dataset": "d", "arch": "ensemble", "input_size": 28, **ens}}}


@pytest.mark.parametrize("ens, message", [
    ({}, "an ensemble needs at least two other models"),
    ({"members": ["a", "nope"]}, "'nope' is not a key of models"),
    ({"members": ["a", "c"]}, "'c' is a model of dataset 'e'"),
    ({"members": ["a", "ens"]}, "'ens' is the ensemble itself"),
    ({"members": ["a", "b"], "input_size": 32}, "'a' is of input_size 28, not 32"),
    ({"members": ["a", "b"], "weights": "w.pt"}, "an ensemble has no weights of its own"),
])
def test_the_config_refuses_an_ensemble_that_cannot_be_averaged(ens, message):
    with pytest.raises(CvauditError, match=message):
        validate_config(copy.deepcopy(_config(**ens)))
    assert validate_config(copy.deepcopy(_config(members=["a", "b"])))["models"]["ens"]["members"] == ["a", "b"]
    with pytest.raises(CvauditError, match="members' is for arch: ensemble"):
        validate_config({**_config(members=["a", "b"]), "models": {"a": {"dataset": "d", "arch": "mlp", "members": ["b", "c"]}}})


def test_the_comparison_sets_the_ensemble_against_each_member():
    from cvaudit.report.compare_models import ensembles_against_members
    rng = np.random.default_rng(0)
    n = 400
    right_a, right_b = rng.random(n) < 0.7, rng.random(n) < 0.7
    ens_right = right_a | right_b  # the ensemble right wherever either member is: clearly more accurate
    correct = {"a": right_a, "b": right_b, "ens": ens_right}
    conf = {"a": np.full(n, 0.99), "b": np.full(n, 0.7), "ens": np.where(ens_right, 0.9, 0.5)}
    paths = {m: [f"{i}.png" for i in range(n)] for m in correct}
    cfgs = {"a": {"arch": "mlp"}, "b": {"arch": "mlp"}, "ens": {"arch": "ensemble", "members": ["a", "b"]}}
    (e,) = ensembles_against_members(cfgs, correct, conf, paths, seed=0)
    assert e["model"] == "ens" and e["n"] == n and [r["member"] for r in e["members"]] == ["a", "b"]
    a = e["members"][0]
    assert a["accuracy_diff"]["ci_low"] > 0.1 and a["mcnemar_p"] < 1e-6
    assert a["ece"] == pytest.approx(0.99 - right_a.mean()) and a["ece_diff"]["ci_high"] < 0  # a is overconfident
    paths["b"] = paths["b"][::-1]
    (e,) = ensembles_against_members(cfgs, correct, conf, paths, seed=0)
    assert "not on the same test images" in e["members"][1]["reason"]
