"""The demo's planted shortcut, end to end: the demo's two CNNs (cnn_fmnist and cnn_fmnist_shortcut, trained as
config/config.yaml trains them) through the workflow with only the stages this needs. The audit must flag the
shortcut model on its own (SpRAy flags a Shirt cluster at the marked corner, the counterfactual confirms it, the
verdict fails) and must not flag the clean model; the data audit must find the planted leaks. A few minutes:
two trainings of about a minute each on a 2-core CPU."""
import json

import pytest
import yaml

from conftest import FMNIST, REPO, smk
from cvaudit.io import load_npz

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")]

MODELS = ("cnn_fmnist", "cnn_fmnist_shortcut")


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    work = tmp_path_factory.mktemp("shortcut")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["datasets"] = {d: cfg["datasets"][d] for d in ("fmnist", "fmnist_shortcut")}
    cfg["models"] = {m: {**cfg["models"][m], "shift_sets": []} for m in MODELS}
    cfg["report"] = {"pdf": False}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = [f"results/{m}/explain/clever_hans.npz" for m in MODELS] + ["results/data/fmnist_shortcut/data_audit.npz"]
    smk(work, *targets, "--configfile", str(work / "config.yaml"))
    return work


def test_the_shortcut_model_is_caught_and_the_clean_one_is_not(demo_pair):
    cheat = load_npz(demo_pair / "results/cnn_fmnist_shortcut/explain/clever_hans.npz")["meta"]
    clean = load_npz(demo_pair / "results/cnn_fmnist/explain/clever_hans.npz")["meta"]
    assert cheat["method"] == clean["method"] == "lrp"
    assert clean["flagged"] == [] and clean["n_classes_analysed"] == 10
    assert cheat["flagged"] and {f["class"] for f in cheat["flagged"]} == {"Shirt"}
    f = max(cheat["flagged"], key=lambda f: f["paste"]["value"])
    y0, y1, x0, x1 = f["box"]
    assert y0 <= 1 and x0 <= 1 and y1 >= 5 and x1 >= 5 and y1 <= 10 and x1 <= 10  # the mark: px 1-4 of the corner
    assert f["paste"]["ci_low"] > 0.3  # the fail threshold: the mark alone turns other garments into shirts
    assert f["control_paste"]["ci_high"] < 0.1  # a random region of the same size does not
    from cvaudit.checks import shortcut_suspected
    from cvaudit.judge import judge
    thresholds = {"warn": 0.1, "fail": 0.3}
    assert judge(shortcut_suspected({"clever_hans": {"meta": cheat}}), thresholds, False) == "fail"
    assert judge(shortcut_suspected({"clever_hans": {"meta": clean}}), thresholds, False) == "pass"


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
