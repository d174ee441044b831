"""Reports that never mislead: a report is built from exactly the data it names."""

import pytest

from cvaudit import CvauditError


def test_the_comparison_refuses_reports_of_one_dataset_built_from_different_data():
    from cvaudit.report.compare_models import same_data
    cfgs = {"a": {"dataset": "d"}, "b": {"dataset": "d"}, "c": {"dataset": "e"}}
    same = {m: {"provenance": {"manifest_sha256": "1" * 64}} for m in cfgs}
    same_data(same, cfgs)
    mixed = {**same, "b": {"provenance": {"manifest_sha256": "2" * 64}}}
    with pytest.raises(CvauditError, match=r"reports of a and b were built from different data of dataset 'd' "
                                           r"\(manifest 111111111111 vs 222222222222\).*--forcerun results/data/d/manifest.csv"):
        same_data(mixed, cfgs)


@pytest.mark.parametrize("change, words", [
    (lambda c, t: c["datasets"]["tiny"].update(path=str(t / "nowhere")), r"datasets\.tiny\.path': .*nowhere is not an existing folder"),
    (lambda c, t: c["datasets"].update(tab={"source": "csv", "path": str(t)}), r"datasets\.tab\.path': .* is not an existing file \(it is a folder\)"),
    (lambda c, t: c["models"]["cnn_tiny"].update(weights="my.safetensors"), r"models\.cnn_tiny\.weights': file my\.safetensors not found"),
    (lambda c, t: c["models"]["cnn_tiny"].update(arch="python:net.py:build"), r"models\.cnn_tiny\.arch': file net\.py not found"),
    (lambda c, t: c.update(concepts={"mark": {"path": str(t / "marks")}}), r"concepts\.mark\.path': .*marks is not an existing folder"),
    (lambda c, t: (t.joinpath("few").mkdir(), [t.joinpath("few", f"{i}.png").write_bytes(b"") for i in range(5)],
                   c.update(concepts={"mark": {"path": str(t / "few")}})),
     r"concepts\.mark\.path': .*few holds 5 image\(s\); TCAV needs at least 6"),
])
def test_every_path_in_the_config_is_checked_before_planning(tmp_path, change, words):
    import yaml

    from cvaudit.config import SCHEMA, check_paths, validate_config

    from conftest import TINY
    cfg = yaml.safe_load((SCHEMA.parent / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = str(TINY)
    validate_config(cfg)
    check_paths(cfg, tmp_path)
    change(cfg, tmp_path)
    with pytest.raises(CvauditError, match=words):
        check_paths(cfg, tmp_path)


def test_resolve_paths_keeps_absolute_and_library_references():
    from cvaudit.config import resolve_paths
    cfg = {"datasets": {"a": {"source": "idx", "path": "/abs/x"}, "b": {"source": "csv", "path": "t.csv"},
                        "c": {"source": "foolbox_imagenet"}},
           "models": {"m": {"weights": "packaged:efficientnet_lite0", "arch": "python:net.py:make",
                            "classes_file": "names.txt"}, "n": {"weights": "w.pt", "arch": "simple_cnn"}}}
    resolve_paths(cfg, "/elsewhere/cfg")
    assert cfg["datasets"]["a"]["path"] == "/abs/x" and cfg["datasets"]["b"]["path"] == "/elsewhere/cfg/t.csv"
    assert cfg["models"]["m"]["weights"] == "packaged:efficientnet_lite0"
    assert cfg["models"]["m"]["arch"] == "python:/elsewhere/cfg/net.py:make"
    assert cfg["models"]["m"]["classes_file"] == "/elsewhere/cfg/names.txt" and cfg["models"]["n"]["weights"] == "/elsewhere/cfg/w.pt"


# ----------------------------------------------------------------------------- degenerate models
def test_a_collapsed_or_chance_model_is_named_degenerate_and_a_working_one_is_not():
    import numpy as np

    from cvaudit.core import stats
    from cvaudit.model.evaluate_model import degenerate
    targets = np.repeat([0, 1, 2], 40)
    names = ["a", "b", "c"]
    collapsed = degenerate(np.zeros(120, int), targets, [0, 1, 2], names, stats.proportion(40, 120))
    assert collapsed["is"] and collapsed["collapsed"] and collapsed["at_chance"]
    assert collapsed["top_class"] == "a" and collapsed["top_share"] == 1.0 and collapsed["predicted_classes"] == 1
    assert "predicts 'a' for 100% of the test images (true share 33%)" in collapsed["why"]
    good_preds = targets.copy()
    good_preds[:12] = 1  # 90% right, errors spread
    good = degenerate(good_preds, targets, [0, 1, 2], names, stats.proportion(108, 120))
    assert not good["is"] and not good["collapsed"] and not good["at_chance"]
    noisy = np.random.default_rng(0).integers(0, 3, 120)  # at chance without collapsing
    at = degenerate(noisy, targets, [0, 1, 2], names, stats.proportion(int((noisy == targets).sum()), 120))
    assert at["is"] and at["at_chance"] and not at["collapsed"]
    mostly_one = degenerate(np.zeros(120, int), np.zeros(120, int), [0, 1, 2], names, stats.proportion(120, 120))
    assert not mostly_one["collapsed"]  # predicting the class every image belongs to is not a collapse


def test_a_degenerate_models_checks_are_not_scored_and_it_is_never_best():
    from cvaudit.core import stats
    from cvaudit.report import compare_models
    from cvaudit.report.checks import run_checks
    thresholds = {"accuracy": {"warn": 0.8, "fail": 0.5}, "ece": {"warn": 0.1, "fail": 0.2}}
    r = {"eval": {"accuracy": 0.34, "n_test": 120, "accuracy_ci": stats.proportion(41, 120),
                  "degenerate": {"is": True, "why": "it predicts 'a' for 100% of the test images"}},
         "robust": {"calibration": {"before": {"ece": 0.01}}}}
    got = {v["name"]: v for v in run_checks(r, thresholds)}
    assert got["accuracy"]["status"] == "fail" and got["ece"]["status"] == "n/a"
    assert got["ece"]["note"].startswith("not scored: the model is degenerate (it predicts 'a'")
    rows = [{"model": m, "dataset": "d", "degenerate": deg, "values": {k: v for k, *_ in compare_models.COLUMNS},
             "intervals": {}} for m, deg, v in (("bad", "collapsed", 1.0), ("ok1", "", 0.5), ("ok2", "", 0.4))]
    compare_models.mark_best(rows)
    assert rows[0]["best"] == [] and rows[0]["tie"] == []  # the top value, but named, never ranked


def test_batchnorm_with_stale_running_statistics_is_caught_by_the_batch_statistics_check(clean_folder, tmp_path):
    import numpy as np
    import torch

    from cvaudit.core.manifest import ImageDataset, read_manifest
    from cvaudit.data.ingest_dataset import ingest
    from cvaudit.model.evaluate_model import batch_statistics_accuracy
    from cvaudit.net.models import build_model
    from cvaudit.net.pixel_space import predict_proba
    from cvaudit.net.transforms import eval_transform

    from conftest import fit
    ingest({"source": "imagefolder", "path": str(clean_folder), "split": {"val": 0.0, "test": 0.5}}, "t", 0, tmp_path)
    rows = read_manifest(tmp_path / "manifest.csv")
    spec = {"arch": "simple_cnn", "arch_options": {"channels": [8, 16]}, "weights": "none", "num_classes": 3,
            "input_size": 28, "class_names": ["bag", "sneaker", "trouser"], "mean": [0.5] * 3, "std": [0.5] * 3,
            "resize": "stretch"}
    torch.manual_seed(0)
    net = build_model(spec)
    ds = ImageDataset(rows, spec["class_names"], eval_transform(spec))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    fit(net, x, y, steps=60)
    targets = np.array(ds.targets)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean += 3.0  # stale statistics, as after a handful of tracked steps
    before = [p.clone() for p in net.buffers()]
    stale = float((predict_proba(net, rows, spec, "cpu").argmax(1) == targets).mean())
    fresh = batch_statistics_accuracy(net, rows, spec, "cpu", targets)
    assert fresh > 0.9 and stale < fresh - 0.3, (stale, fresh)
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))  # the model itself is untouched


def test_the_diagnosis_names_each_check_with_its_number():
    from cvaudit.report.diagnose import diagnosis
    r = {"eval": {"accuracy": 0.333, "class_names_subset": ["a", "b", "c"],
                  "degenerate": {"is": True, "why": "w", "chance": 0.333, "top_class": "a", "top_share": 1.0,
                                 "true_share": 0.333, "predicted_classes": 1, "batch_stats_accuracy": 0.81}},
         "train": {"trained": True, "best_epoch": 1, "epochs_run": 6, "best_phase": "scratch"},
         "history": [{"train_acc": 0.9, "val_acc": 0.33}],
         "dataset": {"counts": {"a": {"train": 25}, "b": {"train": 24}, "c": {"train": 25}}}}
    d = {row["check"]: row for row in diagnosis(r, {"train": {"lr": 0.01}})["rows"]}
    assert "0.810 with each batch's own statistics vs 0.333" in d["BatchNorm statistics"]["measured"]
    assert "stale" in d["BatchNorm statistics"]["try"]
    assert "epoch 1 of 6" in d["Early stopping"]["measured"] and "raise patience" in d["Early stopping"]["try"]
    assert d["Learning rate"]["measured"] == "lr 0.01" and "ratio 0.96" in d["Class balance"]["measured"]
    assert "over-fitting" in d["Training curve"]["try"]
    assert diagnosis({**r, "eval": {**r["eval"], "degenerate": {"is": False}}}, {}) is None


def test_temperature_scaling_on_a_perfect_validation_set_is_not_applicable(tmp_path, monkeypatch):
    import csv

    import numpy as np

    from cvaudit.net import models, pixel_space
    from cvaudit.robust import calibrate
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows({"path": f"v{i}.png", "label": "ab"[i % 2], "split": "val"} for i in range(20))
    targets = np.arange(20) % 2
    np.savez(tmp_path / "probs.npz", probs=np.eye(2)[targets] * 0.9 + 0.05, targets=targets,
             paths=np.array([f"t{i}.png" for i in range(20)]))
    monkeypatch.setattr(models, "load_model", lambda p, d: (None, {"class_names": ["a", "b"]}))
    monkeypatch.setattr(pixel_space, "predict_proba", lambda m, rows, s, d: np.eye(2)[np.arange(len(rows)) % 2] * 0.98 + 0.01)
    res = calibrate.run_calibration("m", tmp_path / "manifest.csv", tmp_path / "probs.npz", {"bins": 5}, 0, "cpu", 1,
                                 tmp_path / "cal.json")
    assert res["temperature"] is None and res["after"] is None and "0 error(s) in 20 images" in res["reason"]


def test_a_stage_that_reads_a_file_its_rule_does_not_declare_fails(tmp_path, monkeypatch, capsys):
    """The mechanism behind the end-to-end run's check (tests/conftest.py sets CVAUDIT_CHECK_READS)."""
    import subprocess
    import sys

    from conftest import REPO
    monkeypatch.chdir(tmp_path)
    for f in ("results/data/d/manifest.csv", "results/data/d/rejected.csv", "results/data/d/images/a/1.png",
              "results/m/report/old.json"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    script = tmp_path / "stage.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(REPO / "scripts")!r})
from cvaudit.core.job import run

class Sm:
    input = ["results/data/d/manifest.csv"]
    output = ["results/m/report/summary.json"]
    log = []
    rule = "render_report"
    wildcards = {{}}

def main(sm):
    open("results/data/d/manifest.csv").read()
    open("results/data/d/images/a/1.png").read()  # named by the manifest: data, not an undeclared input
    open(sys.argv[1]).read()

run(main, Sm())
""")
    env = {**__import__("os").environ, "CVAUDIT_CHECK_READS": "1"}
    ok = subprocess.run([sys.executable, str(script), "results/data/d/manifest.csv"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, str(script), "results/data/d/rejected.csv"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "read files its rule does not declare: results/data/d/rejected.csv" in bad.stderr


