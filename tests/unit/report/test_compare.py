"""The comparison's arithmetic, in seconds: what a row says about a model, when two models can be
told apart, which model is marked best, and what the exit-status gate reports."""
import numpy as np
import pytest

from cvaudit.report import compare_models


def _summary(model="m", dataset="d", degenerate=None, robustness=True):
    verdicts = [
        {"name": "accuracy", "label": "Test accuracy", "status": "pass", "value": 0.91, "ci_low": 0.89,
         "ci_high": 0.93, "n": 800, "method": None},
        {"name": "rotation_accuracy", "label": "Accuracy rotated", "status": "warn", "value": 0.62, "ci_low": 0.58,
         "ci_high": 0.66, "n": 500, "method": None},
        {"name": "robust_accuracy", "label": "Accuracy under attack", "status": "fail", "value": 0.12,
         "ci_low": 0.09, "ci_high": 0.15, "n": 400, "method": None},
        {"name": "faithfulness", "label": "Grad-CAM faithfulness", "status": "fail", "value": 0.01, "method": "gradcam"},
    ]
    return {
        "model": model, "dataset": dataset, "status": "fail",
        "failed_stages": [{"rule": "explain", "wildcards": "model=m", "error": "out of memory"}],
        "degenerate": degenerate or {"is": False, "why": ""},
        "metrics": {"accuracy": 0.91, "macro_f1": 0.88, "gain_over_baseline": 0.07,
                    "intervals": {"gain_over_baseline": {"value": 0.07, "ci_low": 0.04, "ci_high": 0.1}}},
        "robustness": {"invariance": {"rotate": {"score": 0.6}, "blur": {"score": 0.9}},
                       "calibration": {"ece_before": 0.08, "ece_after": 0.02,
                                       "selective": {"aurc": 0.05, "ci_low": 0.03, "ci_high": 0.08}},
                       "shift": {"sets": {"a": {"ood": {"scores": {"msp": {"auroc": _auc(0.7)}}}},
                                          "b": {"ood": {"scores": {"msp": {"auroc": _auc(0.6)}}}},
                                          "c": {"n": 0, "note": "no image left to evaluate"}}}}
        if robustness else None,
        "representation": {"knn_accuracy": 0.85},
        "verdicts": verdicts, "attribution_methods_passing": ["gradcam", "saliency"],
    }


def _auc(v):
    return {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 100}


@pytest.mark.parametrize("cfg, kind", [
    ({"arch": "mlp", "weights": "imagenet"}, "fully connected net"),
    ({"arch": "timm:resnet18", "weights": "imagenet", "train": False}, "pretrained, as it is"),
    ({"arch": "timm:resnet18", "weights": "packaged:efficientnet_lite0"}, "transfer learning"),
    ({"arch": "simple_cnn", "weights": "none"}, "CNN from scratch"),
    ({"arch": "simple_cnn"}, "CNN from scratch"),
    ({"arch": "timm:resnet18", "weights": None}, "trained from scratch"),
    ({"arch": "timm:resnet18", "weights": "none", "train": True}, "trained from scratch"),
    ({"arch": "onnx:net.onnx", "weights": "none", "train": False}, "ONNX export, a black box"),
    ({"arch": "torchscript:net.pt", "train": False}, "TorchScript export, a black box"),
])
def test_each_kind_of_model_is_named_as_a_reader_would(cfg, kind):
    assert compare_models.kind_of(cfg) == kind


def test_a_row_carries_every_column_from_its_summary():
    row = compare_models.metric_row(_summary(), {"arch": "simple_cnn", "weights": "none"})
    assert row == {
        "model": "m", "dataset": "d", "kind": "CNN from scratch", "degenerate": "", "arch": "simple_cnn",
        "status": "fail", "failed_stages": [{"rule": "explain", "wildcards": "model=m", "error": "out of memory"}],
        "values": {"accuracy": 0.91, "macro_f1": 0.88, "gain_over_baseline": 0.07, "ece": 0.08, "ece_after": 0.02,
                   "aurc": 0.05, "ood_auroc": 0.6, "invariance": pytest.approx(0.75), "rotation_accuracy": 0.62, "robust_accuracy": 0.12,
                   "knn_accuracy": 0.85, "methods_passing": 2},
        "verdicts": {"accuracy": "pass", "rotation_accuracy": "warn", "robust_accuracy": "fail"},
        "intervals": {"gain_over_baseline": {"value": 0.07, "ci_low": 0.04, "ci_high": 0.1},
                      "aurc": {"value": 0.05, "ci_low": 0.03, "ci_high": 0.08}, "ood_auroc": _auc(0.6)},
    }


def test_a_row_of_a_degenerate_model_names_why_and_scores_no_invariance():
    s = _summary(degenerate={"is": True, "why": "predicts one class for every image"})
    row = compare_models.metric_row(s, {"arch": "mlp"})
    assert row["degenerate"] == "predicts one class for every image" and row["values"]["invariance"] is None
    s["degenerate"] = {"is": False, "why": "a stale reason"}  # the reason counts only when it is degenerate
    assert compare_models.metric_row(s, {"arch": "mlp"})["degenerate"] == ""


def test_a_row_without_robustness_or_representation_or_intervals_has_gaps_not_errors():
    s = _summary(robustness=False)
    del s["representation"], s["metrics"]["intervals"], s["degenerate"], s["failed_stages"]
    s["verdicts"] = [v for v in s["verdicts"] if v["name"] != "robust_accuracy"]
    row = compare_models.metric_row(s, {"arch": "mlp"})
    v = row["values"]
    assert (v["ece"], v["ece_after"], v["aurc"], v["ood_auroc"], v["invariance"], v["robust_accuracy"],
            v["knn_accuracy"]) == (None,) * 7
    assert row["intervals"] == {} and row["degenerate"] == "" and v["rotation_accuracy"] == 0.62
    assert row["failed_stages"] == []


def _est(lo, hi):
    return {"value": (lo + hi) / 2, "ci_low": lo, "ci_high": hi}


def _r(model, dataset="d", **intervals):
    return {"model": model, "dataset": dataset, "intervals": intervals, "values": {}}


@pytest.mark.parametrize("a, b, higher, apart", [
    (_est(0.6, 0.7), _est(0.4, 0.5), True, True),
    (_est(0.5, 0.7), _est(0.4, 0.5), True, False),  # touching intervals overlap
    (_est(0.4, 0.5), _est(0.6, 0.7), False, True),  # lower is better
    (_est(0.4, 0.6), _est(0.6, 0.7), False, False),  # touching, lower is better
    (_est(0.4, 0.5), _est(0.6, 0.7), True, False),  # a is the worse: not "a better than b"
    (_est(0.6, 0.7), None, True, False),
    (None, _est(0.4, 0.5), True, False),
    (_est(0.6, 0.7), {"value": 0.4, "ci_low": None, "ci_high": None}, True, False),
    ({"value": 0.6, "ci_low": None, "ci_high": None}, _est(0.4, 0.5), True, False),
])
def test_two_intervals_tell_models_apart_only_when_they_do_not_touch(a, b, higher, apart):
    ra, rb = _r("a", ece=a) if a else _r("a"), _r("b", ece=b) if b else _r("b")
    assert compare_models._apart(ra, rb, "ece", higher, {}) is apart


def test_accuracy_is_told_apart_by_mcnemar_below_005_not_at_it(monkeypatch):
    a, b = np.ones(40, bool), np.r_[np.ones(30, bool), np.zeros(10, bool)]  # 10 discordant pairs: p = 0.002
    ra, rb = _r("a", accuracy=_est(0.1, 0.2)), _r("b", accuracy=_est(0.1, 0.2))  # intervals would say "tie"
    assert compare_models._apart(ra, rb, "accuracy", True, {"a": a, "b": b})
    assert not compare_models._apart(ra, rb, "accuracy", True, {"a": a, "b": a})
    assert not compare_models._apart(ra, rb, "accuracy", True, {"a": a})  # without both, the intervals decide
    assert compare_models._apart(_r("a", accuracy=_est(0.8, 0.9)), _r("b", accuracy=_est(0.1, 0.2)), "accuracy", True,
                          {"a": a})
    monkeypatch.setattr(compare_models.stats, "mcnemar_p", lambda x, y: 0.05)
    assert not compare_models._apart(ra, rb, "accuracy", True, {"a": a, "b": b})
    monkeypatch.setattr(compare_models.stats, "mcnemar_p", lambda x, y: None)
    assert not compare_models._apart(ra, rb, "accuracy", True, {"a": a, "b": b})


def _row(model, dataset, degenerate="", **values):
    full = {k: None for k, *_ in compare_models.COLUMNS} | values
    return {"model": model, "dataset": dataset, "degenerate": degenerate, "values": full,
            "intervals": {k: _est(v - 0.01, v + 0.01) for k, v in values.items()}}


def test_marks_are_given_within_each_dataset_and_never_to_a_lone_or_degenerate_model():
    rows = [_row("lone", "d1", ece=0.9),  # alone in its dataset: nothing to be best against
            _row("a", "d2", ece=0.1, knn_accuracy=0.2), _row("b", "d2", ece=0.5, knn_accuracy=0.9),
            _row("flat", "d2", "predicts one class", ece=0.01, knn_accuracy=0.99),
            _row("c", "d3", ece=0.2), _row("e", "d3", ece=0.21)]  # a column with one value is skipped, not the rest
    rows[1]["values"]["accuracy"] = 0.5  # accuracy known for one model of d2 only: no mark for it
    compare_models.mark_best(rows)
    best = {r["model"]: (sorted(r["best"]), sorted(r["tie"])) for r in rows}
    assert best == {"lone": ([], []), "a": (["ece"], []), "b": (["knn_accuracy"], []), "flat": ([], []),
                    "c": ([], ["ece"]), "e": ([], ["ece"])}


def _gate_summary(model, status, verdicts, failed=()):
    return {"model": model, "status": status, "verdicts": verdicts, "failed_stages": list(failed)}


def test_the_gate_lists_each_check_at_or_above_its_level_with_interval_and_n():
    acc = {"name": "accuracy", "label": "Test accuracy", "status": "fail", "value": 0.41234, "ci_low": 0.3456,
           "ci_high": 0.4789, "n": 200, "method": None}
    ece = {"name": "ece", "label": "ECE", "status": "warn", "value": 0.1, "method": None}
    rot = {"name": "rotation", "label": "Rotated", "status": "inconclusive", "value": 0.7, "ci_low": 0.6,
           "ci_high": 0.8, "n": 30, "method": None}
    per_method = {"name": "faith", "label": "Grad-CAM faithfulness", "status": "fail", "value": 0.0,
                  "method": "gradcam"}
    no_value = {"name": "x", "label": "Skipped", "status": "fail", "value": None, "method": None}
    good = _gate_summary("good", "pass", [])
    bad = _gate_summary("bad", "fail", [acc, ece, rot, per_method, no_value])
    crashed = _gate_summary("crashed", "pass", [], [{"rule": "explain", "wildcards": "model=crashed",
                                                      "error": "out of memory"}])
    summaries = [good, bad, crashed]
    assert compare_models.gate_problems(summaries, "never") == []
    assert compare_models.gate_problems(summaries, "fail") == [
        "model bad: overall fail: Test accuracy fail (0.4123, 95% interval [0.346, 0.479], n = 200)",
        "model crashed: stage explain model=crashed failed: out of memory"]
    assert compare_models.gate_problems(summaries, "warn")[0] == (
        "model bad: overall fail: Test accuracy fail (0.4123, 95% interval [0.346, 0.479], n = 200); ECE warn (0.1)")
    assert "Rotated inconclusive (0.7, 95% interval [0.6, 0.8], n = 30)" in compare_models.gate_problems(
        summaries, "inconclusive")[0]
    assert compare_models.gate_problems([good, _gate_summary("w", "warn", [ece])], "warn") == ["model w: overall warn: ECE warn (0.1)"]
    assert compare_models.gate_problems([_gate_summary("w", "warn", [ece])], "fail") == []
    old = {"model": "old", "status": "pass", "verdicts": []}  # a summary from before failed_stages existed
    assert compare_models.gate_problems([old], "warn") == []


def test_reports_of_different_datasets_may_differ_in_data_and_the_first_pair_that_differs_is_named():
    from cvaudit import CvauditError
    cfgs = {"a": {"dataset": "d"}, "b": {"dataset": "d"}, "c": {"dataset": "d"}, "x": {"dataset": "e"}}
    digest = {"a": "1" * 64, "b": "1" * 64, "c": "3" * 64, "x": "2" * 64}
    loaded = {m: {"provenance": {"manifest_sha256": digest[m]}} for m in cfgs}
    with pytest.raises(CvauditError, match=r"reports of a and c .* \(manifest 111111111111 vs 333333333333\)"):
        compare_models.same_data(loaded, cfgs)
    del loaded["c"]
    compare_models.same_data(loaded, cfgs)  # x's dataset e differs from d's data, as it should
