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


def test_compare_models_cka_and_a_clear_error_for_different_test_images(tmp_path):
    from cvaudit import CvauditError
    from cvaudit.io import read_json, save_npz
    from cvaudit.represent import compare_models
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8))
    paths = np.array([f"img{i}.png" for i in range(50)])
    runs = {"a": emb, "b": emb @ np.linalg.qr(rng.normal(size=(8, 8)))[0], "c": rng.normal(size=(50, 8))}
    for name, e in runs.items():
        save_npz(tmp_path / f"{name}.npz", {"knn_accuracy": 0.5, "dim": 8}, embeddings=e, paths=paths,
                 preds=(e[:, 0] > 0).astype(int))
    res = compare_models({n: tmp_path / f"{n}.npz" for n in runs}, seed=0, out=tmp_path / "cmp.json")
    assert read_json(tmp_path / "cmp.json")["models"] == ["a", "b", "c"]
    assert res["cka"][0][1] == pytest.approx(1.0) and res["cka"][0][2] < 0.5  # rotation-invariant; unrelated low
    save_npz(tmp_path / "c.npz", {"knn_accuracy": 0.5, "dim": 8}, embeddings=runs["c"], paths=paths[::-1],
             preds=np.zeros(50, int))
    with pytest.raises(CvauditError, match="different test images"):
        compare_models({n: tmp_path / f"{n}.npz" for n in runs}, seed=0, out=tmp_path / "cmp.json")
