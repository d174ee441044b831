import numpy as np
import pytest
import torch

from cvaudit.models import build_model
from cvaudit.represent import cka_matrix, embedding_space, linear_cka, pick_layers, stream_features


def test_linear_cka_properties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))  # a random orthogonal matrix
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0)
    assert linear_cka(x, x + 3.0) == pytest.approx(1.0)  # centring
    assert linear_cka(rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))) < 0.02
    assert 0.2 < linear_cka(x, x[:, :10]) < 0.9  # shares half of the directions
    m = np.array(cka_matrix({"a": x, "b": x @ q, "c": rng.normal(size=(300, 20))})["matrix"])
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1) and m[0, 1] == pytest.approx(1.0)


def test_embedding_space_on_separated_and_mixed_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(scale=8, size=(4, 16))
    sep = centres[labels] + rng.normal(size=(200, 16))
    out = embedding_space(sep, labels, seed=0)
    assert out["pca"].shape == (200, 2) and out["tsne"].shape == (200, 2)
    assert np.isfinite(out["tsne"]).all() and np.isfinite(out["pca"]).all()
    assert out["knn_accuracy"] > 0.95 and out["silhouette"] > 0.5
    assert out["neighbours"].shape == (200, 5) and not (out["neighbours"] == np.arange(200)[:, None]).any()
    mixed = embedding_space(rng.normal(size=(200, 16)), labels, seed=0)
    assert mixed["knn_accuracy"] < 0.45 and mixed["silhouette"] < 0.1  # chance is 0.25


def test_stream_features_gives_the_head_input(tiny_copy, tmp_path):
    from cvaudit.data import ingest, read_manifest
    ingest({"source": "imagefolder", "path": str(tiny_copy)}, "t", 0, tmp_path)
    rows = read_manifest(tmp_path / "manifest.csv", "test")
    torch.manual_seed(0)
    spec = {"arch": "simple_cnn", "arch_options": {"channels": [8, 16]}, "weights": "none", "input_size": 28,
            "num_classes": 3, "class_names": ["bag", "sneaker", "trouser"], "mean": [0.5] * 3, "std": [0.5] * 3}
    model = build_model(spec).eval()
    layers = pick_layers(model, 2)
    f = stream_features(model, rows, spec, "cpu", layers, cka_images=5, batch_size=3)
    assert f["embeddings"].shape == (len(rows), 16) and f["layers"][layers[0]].shape[0] == 5
    head = model.classifier[2]
    logits = torch.from_numpy(f["embeddings"]) @ head.weight.T + head.bias
    assert np.allclose(torch.softmax(logits, 1).detach().numpy(), f["probs"], atol=1e-5)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
