"""The demo's planted shortcut, end to end: the demo's two CNNs (cnn_fmnist and cnn_fmnist_shortcut, trained as
config/config.yaml trains them, at half the epochs) through the workflow with only the stages this needs. The audit must flag the
shortcut model on its own (SpRAy flags a Shirt cluster at the marked corner, the counterfactual confirms it, the
verdict fails) and must not flag the clean model; the data audit (the hash, and the model's embedding) must find
the planted leaks. A few minutes:
two trainings of under a minute each on a 2-core CPU."""
import json

import pytest
import yaml

from cvaudit.core.files import load_npz

from conftest import FMNIST, REPO, smk

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")]

MODELS = ("cnn_fmnist", "cnn_fmnist_shortcut")


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    work = tmp_path_factory.mktemp("shortcut")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["datasets"] = {d: cfg["datasets"][d] for d in ("fmnist", "fmnist_shortcut")}
    # config/config.yaml's recipe at half the epochs: the square is learnt in the first few
    cfg["models"] = {m: {**cfg["models"][m], "shift_sets": [],
                         "train": {**cfg["models"][m]["train"], "head_epochs": 5, "finetune_epochs": 5}} for m in MODELS}
    cfg["report"] = {"pdf": False}
    cfg["explain"]["methods"] = ["gradcam"]  # the stages a report needs, and Clever Hans
    cfg["represent"] = {"enabled": True, "ascent": {"enabled": False}, "layer_views": {"enabled": False}}  # embeddings
    cfg["robustness"] = {"enabled": False}
    # the planted copies are JPEG re-encodings: the hash finds them (the copy search, tested on its own, is off),
    # and the label check reads a sample
    cfg["data_audit"] = {"copies": {"enabled": False}, "max_label_images": 500}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    smk(work, "--configfile", str(work / "config.yaml"))  # every report and the comparison
    return work


def test_the_shortcut_model_is_caught_and_the_clean_one_is_not(demo_pair):
    import numpy as np

    from cvaudit.explain.spray import pixel_mask
    from cvaudit.report.judge import judge
    from cvaudit.report.shortcut_checks import shortcut_suspected
    cheat = load_npz(demo_pair / "results/cnn_fmnist_shortcut/explain/clever_hans.npz")["meta"]
    clean = load_npz(demo_pair / "results/cnn_fmnist/explain/clever_hans.npz")["meta"]
    assert cheat["method"] == clean["method"] == "lrp"
    assert clean["n_classes_analysed"] == 10 and cheat["n_train"] > 0  # the training images are searched too
    thresholds = {"warn": 0.1, "fail": 0.3}
    assert all((f["gain"]["value"] or 0) < 0.1 for f in clean["flagged"])  # whatever was suspect, nothing beat its control
    assert judge(shortcut_suspected({"clever_hans": {"meta": clean}}), thresholds, False) == "pass"
    f = cheat["flagged"][0]  # the largest gain
    assert f["class"] == "Shirt" and f["kind"] == "region"
    assert pixel_mask(np.array(f["region"], bool), 28, 28)[1:5, 1:5].mean() >= 0.5  # on the mark: px 1-4 of the corner
    assert f["area"] <= 0.15  # the cells' own area: a corner or an edge strip, never a bounding box of scattered cells
    assert all(g["shape"] != "border" for g in cheat["flagged"])  # a corner mark is no frame
    assert f["paste"]["ci_low"] > 0.3  # the mark alone turns other garments into shirts
    assert f["control_paste"]["ci_high"] < 0.1  # its control does not
    assert f["gain"]["ci_low"] > 0.3
    assert judge(shortcut_suspected({"clever_hans": {"meta": cheat}}), thresholds, False) == "fail"


def test_the_planted_copy_and_its_leaks(demo_pair):
    info = json.loads((demo_pair / "results/data/fmnist_shortcut/dataset.json").read_text())
    shirts = info["marked"]["Shirt"]
    assert shirts["train"] / info["counts"]["Shirt"]["train"] > 0.8
    assert all(v["train"] == 0 for c, v in info["marked"].items() if c != "Shirt")
    audit = load_npz(demo_pair / "results/data/fmnist_shortcut/data_audit.npz")
    planted = {p["test"] for p in info["planted_duplicates"]}
    paths, splits = [str(p) for p in audit["paths"]], [str(s) for s in audit["splits"]]
    leaked = {paths[k] for i, j, _ in audit["pairs"] if {splits[i], splits[j]} == {"test", "train"}
              for k in (i, j) if splits[k] == "test"}
    assert len(planted) == 6 and planted <= leaked
    # the shortcut model's own embedding finds them again (each confirmed on the pixels, the hash's pairs too)
    emb = load_npz(demo_pair / "results/cnn_fmnist_shortcut/represent/duplicates.npz")
    found = {str(emb["test_paths"][i]) for i, h in zip(emb["test_index"], emb["by_phash"]) if h}
    assert planted <= found and emb["meta"]["side"] == 28


def test_the_reports_lead_with_it_and_the_comparison_says_who_cheats(demo_pair):
    res = demo_pair / "results"
    cheat = json.loads((res / "cnn_fmnist_shortcut" / "report" / "summary.json").read_text())
    clean = json.loads((res / "cnn_fmnist" / "report" / "summary.json").read_text())
    verdict = lambda s: next(v for v in s["verdicts"] if v["check"] == "shortcut_suspected")  # noqa: E731
    assert verdict(cheat)["status"] == "fail" and verdict(clean)["status"] == "pass"
    html = (res / "cnn_fmnist_shortcut" / "report" / "report.html").read_text()
    lead = html.index("This model takes a shortcut.")
    assert lead < html.index('<table class="verdicts">')  # the summary opens with it
    assert "This model takes a shortcut." not in (res / "cnn_fmnist" / "report" / "report.html").read_text()
    cmp_ = json.loads((res / "compare" / "summary.json").read_text())["clever_hans"]
    assert cmp_["cnn_fmnist_shortcut"]["cheats"] and not cmp_["cnn_fmnist"]["cheats"]
    text = (res / "compare" / "report.html").read_text()
    said = text[text.index('id="clever-hans"'):text.index("</section>", text.index('id="clever-hans"'))]
    assert "cnn_fmnist_shortcut</b> (fmnist_shortcut):" in said and "<strong>cheats.</strong>" in said
    assert said.count("<strong>cheats.</strong>") == 1
    assert "no sign of a shortcut" in said or "no shortcut: the suspects flip no more than their controls" in said
