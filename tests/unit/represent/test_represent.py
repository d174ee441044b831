import numpy as np
import pytest
import torch

from cvaudit.net.features import stream_features
from cvaudit.net.models import build_model
from cvaudit.represent.represent import cka_matrix, embedding_space, linear_cka, pick_layers


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
    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.ingest_dataset import ingest
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
    assert np.allclose(logits.detach().numpy(), f["logits"], atol=1e-5)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_compare_models_cka_and_a_clear_error_for_different_test_images(tmp_path):
    from cvaudit import CvauditError
    from cvaudit.core.files import read_json, save_npz
    from cvaudit.represent.represent import compare_representations
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8))
    paths = np.array([f"img{i}.png" for i in range(50)])
    runs = {"a": emb, "b": emb @ np.linalg.qr(rng.normal(size=(8, 8)))[0], "c": rng.normal(size=(50, 8))}
    for name, e in runs.items():
        save_npz(tmp_path / f"{name}.npz", {"knn_accuracy": 0.5, "dim": 8}, embeddings=e, paths=paths,
                 preds=(e[:, 0] > 0).astype(int))
    res = compare_representations({n: tmp_path / f"{n}.npz" for n in runs}, seed=0, out=tmp_path / "cmp.json")
    assert read_json(tmp_path / "cmp.json")["models"] == ["a", "b", "c"]
    assert res["cka"][0][1] == pytest.approx(1.0) and res["cka"][0][2] < 0.5  # rotation-invariant; unrelated low
    save_npz(tmp_path / "c.npz", {"knn_accuracy": 0.5, "dim": 8}, embeddings=runs["c"], paths=paths[::-1],
             preds=np.zeros(50, int))
    with pytest.raises(CvauditError, match="different test images"):
        compare_representations({n: tmp_path / f"{n}.npz" for n in runs}, seed=0, out=tmp_path / "cmp.json")


def test_layer_uniformity_knows_alike_layers_from_different_ones():
    from cvaudit.represent.represent import layer_uniformity, uniformity_difference
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 10))
    alike = {f"l{i}": x @ np.linalg.qr(rng.normal(size=(10, 10)))[0] + 0.05 * rng.normal(size=(120, 10)) for i in range(4)}
    apart = {f"l{i}": rng.normal(size=(120, 10)) for i in range(4)}
    u, v = layer_uniformity(alike, seed=0), layer_uniformity(apart, seed=0)
    assert u["mean"] > 0.95 and u["low"] <= u["mean"] <= u["high"] and u["n"] == 120 and u["layers"] == 4
    assert v["high"] < 0.3 and layer_uniformity({"only": x}, seed=0) is None
    d = uniformity_difference(alike, apart, seed=0)
    assert d["low"] > 0.5 and d["mean"] == pytest.approx(u["mean"] - v["mean"])


def test_a_vits_layers_are_its_blocks_and_its_tokens_are_pooled_like_maps(tiny_copy, tmp_path):
    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.ingest_dataset import ingest

    from tiny_models import tiny_vit_spec
    ingest({"source": "imagefolder", "path": str(tiny_copy)}, "t", 0, tmp_path)
    rows = read_manifest(tmp_path / "manifest.csv", "test")
    spec = tiny_vit_spec(input_size=32, depth=3)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    layers = pick_layers(model, 6)
    assert layers == ["patch_embed", "blocks.0", "blocks.1", "blocks.2"]
    f = stream_features(model, rows, spec, "cpu", layers, cka_images=4, batch_size=3)
    assert f["layers"]["patch_embed"].shape == (4, 32 * 4)  # no class token yet: the grid pooled to 2x2
    assert f["layers"]["blocks.1"].shape == (4, 32 + 32 * 4)  # the class token beside the pooled grid
    assert f["embeddings"].shape == (len(rows), 32)


def test_compare_models_sets_a_transformers_layers_against_a_cnns(tmp_path):
    from cvaudit.core.files import save_npz
    from cvaudit.represent.represent import compare_representations
    rng = np.random.default_rng(0)
    paths = np.array([f"img{i}.png" for i in range(40)])
    base = rng.normal(size=(40, 6))
    vit = {f"layer_{i}": base + 0.1 * rng.normal(size=(40, 6)) for i in range(3)}  # alike layers
    cnn = {"layer_0": base, "layer_1": rng.normal(size=(40, 6))}
    for name, layers, flag in (("vit", vit, True), ("cnn", cnn, False), ("mlp", cnn, False)):
        meta = {"knn_accuracy": 0.5, "dim": 6, "transformer": flag,
                "cka": {"layers": [f"{name}.{i}" for i in range(len(layers))], "matrix": []}}
        save_npz(tmp_path / f"{name}.npz", meta, embeddings=base, paths=paths, preds=np.zeros(40, int), **layers)
    res = compare_representations({n: tmp_path / f"{n}.npz" for n in ("cnn", "vit", "mlp")}, seed=0, out=tmp_path / "c.json")
    pairs = res["layer_pairs"]
    assert [(p["rows"], p["columns"]) for p in pairs] == [("vit", "cnn"), ("vit", "mlp")]  # CNN-CNN pairs are not drawn
    m = np.array(pairs[0]["matrix"])
    assert m.shape == (3, 2) and (m[:, 0] > 0.9).all() and (m[:, 1] < 0.5).all()
    assert pairs[0]["uniformity_difference"]["low"] > 0 and pairs[0]["n_images"] == 40


def test_uniformity_is_compared_on_as_many_layers_of_each_model():
    from cvaudit.represent.represent import uniformity_difference
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 6))
    drift = {f"l{i}": x + 0.4 * i * rng.normal(size=(80, 6)) for i in range(7)}  # neighbours alike, ends apart
    few = {k: drift[k] for k in ("l0", "l3", "l6")}
    d = uniformity_difference(drift, few, seed=0)
    assert d["layers"][0] == ["l0", "l3", "l6"] and abs(d["mean"]) < 1e-12  # the same three layers: no difference
