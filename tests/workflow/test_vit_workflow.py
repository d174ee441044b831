"""A tiny vision transformer end to end through snakemake beside a CNN on the tiny real images: trained from
scratch, evaluated, explained by the methods that apply (and the others refused with their reason), its units
and layers read on the patch grid, its layers compared with the CNN's, and both reports rendered. The two
together as an ensemble (arch: ensemble), audited as one model and set against each of them. A Hugging Face ViT
given as a save_pretrained folder (arch hf:FOLDER), fine-tuned here and audited like the others."""
import json

import numpy as np
import pytest

from cvaudit.core.files import load_npz, read_json

from conftest import tiny_workflow

pytestmark = pytest.mark.e2e
# a gradient, a layer and the two attention methods (the methods that refuse a ViT, with their reasons:
# tests/unit/net/test_vit.py; the gradient methods on an ensemble: tests/unit/model/test_ensemble.py)
METHODS = ["saliency", "gradcam", "attention_rollout", "transformer_attribution"]


def _hf_vit(folder, classes):
    """A tiny transformers ViT (seeded) saved as a user's folder: config.json, model.safetensors and its processor."""
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, id2label=dict(enumerate(classes)))
    transformers.AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def _vit_and_ensemble(cfg, images):
    _hf_vit(images.parent / "hf_vit", sorted(p.name for p in images.iterdir() if p.is_dir()))
    cfg["models"] = {
        "vit_tiny": {"dataset": "tiny", "arch": "timm:vit_tiny_patch16_224", "input_size": 32, "weights": "none",
                     "arch_options": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
                     "train": {"batch_size": 8, "head_epochs": 2, "finetune_epochs": 0, "lr": 0.001}},
        "cnn_tiny": cfg["models"]["cnn_tiny"],
        "ens_tiny": {"dataset": "tiny", "arch": "ensemble", "members": ["vit_tiny", "cnn_tiny"], "input_size": 32},
        "hf_vit": {"dataset": "tiny", "arch": f"hf:{images.parent / 'hf_vit'}", "input_size": 32,
                   "train": {"batch_size": 8, "head_epochs": 1, "finetune_epochs": 1, "lr": 0.001}}}
    cfg["explain"]["methods"] = METHODS
    cfg["represent"].update(layers=4, ascent={"enabled": False}, layer_views={"enabled": False})
    # the stages that read a ViT like any model are the session run's to test
    cfg["robustness"] = {"enabled": False}
    cfg["data_audit"] = {"enabled": False}
    cfg["clever_hans"] = {"enabled": False}
    cfg["report"] = {"pdf": False}


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("vit")
    tiny_workflow(work, _vit_and_ensemble)
    return work


def test_the_vit_is_trained_evaluated_and_reported(vit_run):
    rep = vit_run / "results" / "vit_tiny" / "report"
    summary = json.loads((rep / "summary.json").read_text())
    metrics = json.loads((vit_run / "results" / "vit_tiny" / "eval" / "metrics.json").read_text())
    assert summary["model"] == "vit_tiny" and summary["metrics"]["accuracy"] == metrics["accuracy"]
    assert f"{metrics['accuracy']:.3f}" in (rep / "report.html").read_text()


def test_the_methods_that_read_a_vit_run_and_the_others_say_why_not(vit_run):
    summary = json.loads((vit_run / "results" / "vit_tiny" / "report" / "summary.json").read_text())
    html = (vit_run / "results" / "vit_tiny" / "report" / "report.html").read_text()
    assert set(summary["attributions"]) == {"saliency", "gradcam", "attention_rollout", "transformer_attribution"}
    for method in ("gradcam", "attention_rollout", "transformer_attribution"):
        maps = load_npz(vit_run / "results" / "vit_tiny" / "explain" / method / "maps.npz")
        assert maps["meta"]["applicable"] and maps["maps_pred"].shape[1:] == (32, 32) and np.isfinite(maps["maps_pred"]).all()
        a = summary["attributions"][method]
        assert f"{a['deletion_auc']:.3f}" in html
    assert "Attention rollout" in html
    cnn = json.loads((vit_run / "results" / "cnn_tiny" / "report" / "summary.json").read_text())
    assert "attention_rollout" not in cnn["attributions"] and "gradcam" in cnn["attributions"]
    assert "Attention rollout: not applicable to this model: the model is not a vision transformer" in \
        (vit_run / "results" / "cnn_tiny" / "report" / "report.html").read_text()


def test_units_and_layers_of_a_vit_are_read_on_its_patch_grid(vit_run):
    units = load_npz(vit_run / "results" / "vit_tiny" / "represent" / "units.npz")
    assert units["meta"]["unit_layer"].startswith("blocks.") and units["meta"]["unit_shape"][1:] == [4, 4]
    assert all(layer["shape"][1:] == [4, 4] for layer in units["meta"]["layers"])
    emb = load_npz(vit_run / "results" / "vit_tiny" / "represent" / "embeddings.npz")
    assert emb["meta"]["transformer"] and emb["meta"]["cka"]["layers"][0] == "patch_embed"
    u = json.loads((vit_run / "results" / "vit_tiny" / "report" / "summary.json").read_text())["representation"]["layer_uniformity"]
    assert u["low"] <= u["mean"] <= u["high"] and u["layers"] == 4


def test_the_comparison_sets_the_vits_layers_against_the_cnns(vit_run):
    reps = read_json(vit_run / "results" / "compare" / "tiny" / "representations.json")
    pairs = {(p["rows"], p["columns"]): p for p in reps["layer_pairs"]}  # every pair with a transformer in it
    assert set(pairs) == {("vit_tiny", "cnn_tiny"), ("hf_vit", "cnn_tiny"), ("hf_vit", "vit_tiny")}
    pair = pairs["vit_tiny", "cnn_tiny"]
    assert np.array(pair["matrix"]).shape == (len(pair["row_layers"]), len(pair["column_layers"]))
    d = pair["uniformity_difference"]
    assert d["low"] <= d["mean"] <= d["high"]
    html = (vit_run / "results" / "compare" / "report.html").read_text()
    assert "Linear CKA between every layer of vit_tiny (rows) and of cnn_tiny (columns)" in html
    summary = read_json(vit_run / "results" / "compare" / "summary.json")
    assert {p["rows"] for p in summary["transformer_vs_cnn"]["tiny"]} == {"vit_tiny", "hf_vit"}


def test_the_ensemble_is_audited_as_one_model_and_set_against_its_members(vit_run):
    res = vit_run / "results"
    train = json.loads((res / "ens_tiny" / "train" / "metrics.json").read_text())
    assert train["ensemble"] == ["vit_tiny", "cnn_tiny"] and not train["trained"]
    summary = json.loads((res / "ens_tiny" / "report" / "summary.json").read_text())
    html = (res / "ens_tiny" / "report" / "report.html").read_text()
    assert "ensemble of vit_tiny, cnn_tiny" in html
    assert "saliency" in summary["attributions"] and "gradcam" not in summary["attributions"]
    assert "Grad-CAM: not applicable to this model: the model is an ensemble" in html  # it says why it refuses
    emb = load_npz(res / "ens_tiny" / "represent" / "embeddings.npz")
    assert emb["embeddings"].shape[1] == 32 + 16  # the ViT's class token beside the CNN's 16 channels
    assert not (res / "ens_tiny" / "represent" / "units.npz").exists()
    assert "Not run for an ensemble: its average has no units or channels of its own" in html
    # its probabilities are the members' average, image by image
    probs = {m: np.load(res / m / "eval" / "probs.npz")["probs"] for m in ("ens_tiny", "vit_tiny", "cnn_tiny")}
    assert np.allclose(probs["ens_tiny"], (probs["vit_tiny"] + probs["cnn_tiny"]) / 2, atol=1e-5)
    (e,) = read_json(res / "compare" / "summary.json")["ensembles"]
    assert e["model"] == "ens_tiny" and [r["member"] for r in e["members"]] == ["vit_tiny", "cnn_tiny"]
    for r in e["members"]:
        assert r["accuracy_diff"]["value"] == pytest.approx(e["accuracy"] - r["accuracy"])
    assert "Ensembles against their members" in (res / "compare" / "report.html").read_text()


def test_a_hugging_face_vit_is_fine_tuned_and_audited_from_its_folder(vit_run):
    res = vit_run / "results" / "hf_vit"
    train = read_json(res / "train" / "metrics.json")
    assert train["trained"] and train["best_phase"] in ("head", "finetune")  # transfer learning from the folder's weights
    assert "(from " in train["preprocessing"] and "mean [0.5, 0.5, 0.5]" in train["preprocessing"]
    summary = read_json(res / "report" / "summary.json")
    html = (res / "report" / "report.html").read_text()
    assert train["preprocessing"] in html  # the model card states the processor's preprocessing
    assert train["weights"].endswith("hf_vit/model.safetensors") and f"weights {train['weights']}" in html
    assert {"attention_rollout", "transformer_attribution", "gradcam"} <= set(summary["attributions"])
    rollout = load_npz(res / "explain" / "attention_rollout" / "maps.npz")
    assert rollout["meta"]["applicable"] and np.isfinite(rollout["maps_pred"]).all() and rollout["maps_pred"].std() > 0
    units = load_npz(res / "represent" / "units.npz")
    assert units["meta"]["unit_layer"].startswith("hf.vit.layers.") and units["meta"]["unit_shape"][1:] == [4, 4]


def test_every_summary_follows_the_schema_with_a_vit_and_an_ensemble(vit_run):
    import jsonschema
    import yaml

    from conftest import REPO
    schema = yaml.safe_load((REPO / "report" / "summary.schema.yaml").read_text())
    for m in ("vit_tiny", "cnn_tiny", "ens_tiny", "hf_vit"):
        summary = json.loads((vit_run / "results" / m / "report" / "summary.json").read_text())
        jsonschema.validate(summary, schema)
        assert summary["failed_stages"] == [], m
