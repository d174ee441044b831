"""Known answers for the numbers verdicts and rankings rest on, each built so that the quantities differ
(precision from recall, model from baseline, best from worst, higher- from lower-is-better): a test that
would still pass with the sign, the order or the direction flipped is no test."""
import json

import numpy as np
import pytest
import torch

from cvaudit.model.evaluate_model import classification_metrics
from cvaudit.report import compare_models
from cvaudit.report.attribution_checks import faithfulness_gain


def test_precision_and_recall_on_a_case_where_they_differ():
    targets = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 1, 2])
    m = classification_metrics(np.eye(3)[preds], targets, [0, 1, 2], ["a", "b", "c"])
    pc = {c["class"]: c for c in m["per_class"]}
    assert (pc["a"]["precision"], pc["a"]["recall"]) == (pytest.approx(1.0), pytest.approx(1 / 3))
    assert (pc["b"]["precision"], pc["b"]["recall"]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert m["confusion"]["matrix"] == [[1, 2, 0], [0, 2, 0], [0, 0, 1]]  # rows: true class, columns: predicted


@pytest.mark.parametrize("baseline_right, sign", [(True, -1), (False, 1)])
def test_gain_over_baseline_is_model_minus_baseline(clean_folder, tmp_path, baseline_right, sign):
    from cvaudit.core.manifest import read_manifest
    from cvaudit.data.ingest_dataset import ingest
    from cvaudit.model.evaluate_model import evaluate_model
    from cvaudit.net.models import build_model, save_model
    ingest({"source": "imagefolder", "path": str(clean_folder), "split": {"val": 0.0, "test": 0.6}}, "t", 0, tmp_path)
    n_test = len(read_manifest(tmp_path / "manifest.csv", "test"))
    spec = {"arch": "simple_cnn", "arch_options": {"channels": [4]}, "weights": "none", "num_classes": 3,
            "input_size": 28, "class_names": ["bag", "sneaker", "trouser"], "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.manual_seed(0)
    save_model(build_model(spec).eval(), spec, tmp_path / "m.safetensors")
    base = {"available": True, "accuracy": float(baseline_right), "correct": [int(baseline_right)] * n_test}
    (tmp_path / "b.json").write_text(json.dumps(base))
    out = {k: tmp_path / f"{k}.out" for k in ("pred", "metrics", "audit", "probs")}
    m = evaluate_model("m", tmp_path / "m.safetensors", tmp_path / "manifest.csv", tmp_path / "b.json",
                       {"per_class": 1, "max_images": 3, "mistakes": 2}, 0, "cpu", 1, out["pred"], out["metrics"],
                       out["audit"], out["probs"])
    assert 0 < m["accuracy"] < 1  # an untrained network: neither all right nor all wrong here
    assert m["gain_over_baseline"] == pytest.approx(m["accuracy"] - float(baseline_right))
    assert np.sign(m["gain_over_baseline"]) == sign
    assert m["gain_over_baseline_ci"]["value"] == pytest.approx(m["gain_over_baseline"])


def _row(model, values, intervals=None):
    return {"model": model, "dataset": "d", "degenerate": "", "values": values, "intervals": intervals or {}}


def test_the_comparison_marks_the_better_model_in_each_direction_never_the_worse():
    """Three models with known order in every ranked column; ECE is lower-is-better."""
    keys = [k for k, *_ in compare_models.COLUMNS]

    def est(v, half=0.01):
        return {"value": v, "ci_low": v - half, "ci_high": v + half, "n": 500, "method": "wilson", "note": ""}

    good = {k: 0.9 for k in keys} | {"ece": 0.02}
    mid = {k: 0.6 for k in keys} | {"ece": 0.10}
    bad = {k: 0.3 for k in keys} | {"ece": 0.30}
    ranked = ("gain_over_baseline", "ece", "rotation_accuracy", "robust_accuracy")  # columns with intervals
    rows = [_row(m, v, {k: est(v[k]) for k in ranked}) for m, v in (("bad", bad), ("good", good), ("mid", mid))]
    n = 400
    correct = {"good": np.arange(n) < 0.9 * n, "mid": np.arange(n) < 0.6 * n, "bad": np.arange(n) < 0.3 * n}
    compare_models.mark_best(rows, correct)
    best = {r["model"]: set(r["best"]) for r in rows}
    assert best["good"] == {"accuracy", *ranked} and best["bad"] == set() and best["mid"] == set()
    flipped = [_row(r["model"], r["values"] | {"ece": {"good": 0.30, "mid": 0.10, "bad": 0.02}[r["model"]]},
                    r["intervals"] | {"ece": est({"good": 0.30, "mid": 0.10, "bad": 0.02}[r["model"]])}) for r in rows]
    compare_models.mark_best(flipped, correct)
    assert "ece" in next(r for r in flipped if r["model"] == "bad")["best"]  # the lowest ECE wins, whoever it is


def test_faithfulness_gain_is_the_method_minus_the_random_floor():
    def explain(ins, dele):
        return {"faith_insertion_auc": np.array(ins, float), "faith_deletion_auc": np.array(dele, float)}

    rng = np.random.default_rng(0)
    floor_ins, floor_del = rng.uniform(0.3, 0.4, 12), rng.uniform(0.3, 0.4, 12)
    results = {"seed": 0, "explain": {"random": explain(floor_ins, floor_del),
                                      "good": explain(floor_ins + 0.3, floor_del - 0.1),
                                      "reverse": explain(floor_ins - 0.2, floor_del + 0.2)}}
    g, r = faithfulness_gain(results, "good"), faithfulness_gain(results, "reverse")
    assert g["value"] == pytest.approx(0.4) and g["ci_low"] > 0.39
    assert r["value"] == pytest.approx(-0.4) and r["ci_high"] < -0.39


def test_the_cascade_randomises_the_head_first_and_the_whole_model_last():
    from cvaudit.explain.methods import get_method
    from cvaudit.explain.trust import cascading_randomisation
    from cvaudit.net.models import build_model
    from cvaudit.net.pixel_space import PixelSpace
    torch.manual_seed(0)
    net = PixelSpace(build_model({"arch": "simple_cnn", "arch_options": {"channels": [4, 8]}, "weights": "none",
                                  "num_classes": 3, "input_size": 28}).eval(), [0.5] * 3, [0.5] * 3).eval()
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    t = net(x).argmax(1)
    maps = get_method("saliency").attribute(net, x, t).numpy()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = cascading_randomisation(get_method("saliency"), net, x, t, maps, stages=3)
    assert [s["down_to"] for s in res["stages"]][0] == "classifier.2" and res["stages"][0]["randomised_layers"] == 1
    assert res["stages"][-1]["down_to"] == "features.0" and res["stages"][-1]["randomised_layers"] == 5
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # on a copy: the model is untouched
