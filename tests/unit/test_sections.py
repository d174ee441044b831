"""The report's section registry (cvaudit.sections): what each section reads, grouped back the same way,
one template per section, and the two stages that took work out of the renderers."""
import copy
import re

import numpy as np
import pytest
import yaml

from cvaudit.config import validate_config
from cvaudit.sections import SECTIONS, STAGE_ON, by_section, report_inputs, stage_on

from conftest import REPO

DEMO = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))


def test_every_section_has_its_template_and_no_template_is_orphaned():
    templates = {p.name.removesuffix(".html.j2") for p in (REPO / "templates" / "sections").glob("*.html.j2")}
    assert templates == {s.id for s in SECTIONS}
    layout = (REPO / "templates" / "report.html.j2").read_text()
    assert '{% include "sections/" ~ sid ~ ".html.j2" %}' in layout and "<section" not in layout


def test_every_builder_a_section_names_exists():
    from cvaudit.core.registry import load
    named = [ref for s in SECTIONS for ref in (s.build, s.summary) if ref]
    assert named and all(callable(load(ref)) for ref in named)


def test_the_report_reads_each_stage_output_once_and_groups_it_back_by_section():
    inputs = report_inputs(DEMO, "cnn_fmnist")
    assert len(set(inputs.values())) == len(inputs)
    grouped = by_section({**inputs, "manifest": "m.csv", "audit_set": "a.npz"})  # core inputs are no section's
    assert set(grouped["attributions"]) == {*DEMO["explain"]["methods"], "random", "agreement"}
    assert set(grouped["invariance"]) == set(DEMO["robustness"]["invariance"])
    assert set(grouped["adversarial"]) == set(DEMO["robustness"]["adversarial"]["attacks"])
    assert grouped["representations"]["compare"] == "results/compare/fmnist/representations.json"
    assert set(grouped["units"]) == {"units", "ascent"} and "shuffled_labels" not in grouped  # off in the demo
    assert "representations" in by_section(report_inputs(DEMO, "lite0_imagenet"))
    assert "compare" not in by_section(report_inputs(DEMO, "lite0_imagenet"))["representations"]  # alone on its data


def test_switches_remove_a_sections_files():
    cfg = copy.deepcopy(DEMO)
    cfg["robustness"]["adversarial"]["enabled"] = False
    cfg["represent"]["enabled"] = False
    cfg["robustness"]["shuffled_labels"]["enabled"] = True
    grouped = by_section(report_inputs(cfg, "cnn_fmnist"))
    assert not {"adversarial", "representations", "units"} & set(grouped)
    assert grouped["shuffled_labels"] == {"curves": "results/cnn_fmnist/robust/shuffled_labels.json"}
    assert "shuffled_labels" not in by_section(report_inputs(cfg, "lite0_imagenet"))  # not trained here
    cfg["robustness"]["enabled"] = False
    assert not {"calibration", "invariance", "shuffled_labels"} & set(by_section(report_inputs(cfg, "cnn_fmnist")))
    cfg["explain"]["methods"] = ["gradcam"]  # one method: nothing to agree with, no method_agreement job
    assert by_section(report_inputs(cfg, "cnn_fmnist"))["attributions"].keys() == {"gradcam", "random"}


def test_every_path_the_rules_name_comes_from_the_one_table():
    """No rule file types a results/ path: the rules, the sections and the comparison read cvaudit.paths, and
    every entry there is some rule's."""
    from cvaudit.paths import PATHS, path
    rules = {p.name: p.read_text() for p in (REPO / "rules").glob("*.smk")}
    typed = [f"{n}: {m}" for n, text in rules.items() for m in re.findall(r'"results/[^"]*"', text)]
    assert typed == []
    text = "\n".join(rules.values())
    unused = [n for n in PATHS if f'"{n}"' not in text]
    assert unused == []
    assert path("maps", model="m", method="lrp") == "results/m/explain/lrp/maps.npz"
    assert path("maps", model="m") == "results/m/explain/{method}/maps.npz"  # the rest stay Snakemake's wildcards


def test_one_predicate_decides_a_stage_for_the_report_its_run_times_and_the_estimate():
    """Switching a stage off (or a condition it needs) removes it from the report's inputs and from the run-time
    estimate alike: the estimate counts no job the run will not start."""
    from cvaudit.estimate import model_jobs
    cfg = copy.deepcopy(DEMO)
    cfg["explain"]["methods"] = ["saliency"]  # one method: nothing to agree with
    cfg["robustness"]["slices"]["enabled"] = False
    cfg["data_audit"]["embedding"]["enabled"] = False
    counts = {"train": 600, "val": 100, "test": 300}
    jobs = {stage for stage, _, _ in model_jobs(cfg, "cnn_fmnist", counts)}
    inputs = by_section(report_inputs(cfg, "cnn_fmnist"))
    for stage in ("method_agreement", "slices", "embedding_duplicates"):
        assert not stage_on(cfg, "cnn_fmnist", stage) and stage not in jobs
    assert "agreement" not in inputs["attributions"] and "slices" not in inputs and "embedding" not in inputs["data_audit"]
    jobs_on = {stage for stage, _, _ in model_jobs(DEMO, "cnn_fmnist", counts)}
    assert {"method_agreement", "slices", "embedding_duplicates", "inspect_units"} <= jobs_on
    ensemble = copy.deepcopy(DEMO)
    ensemble["models"]["both"] = {**ensemble["models"]["cnn_fmnist"], "arch": "ensemble", "members": ["cnn_fmnist"]}
    assert not stage_on(ensemble, "both", "inspect_units") and not stage_on(ensemble, "both", "shuffled_labels")
    assert "inspect_units" not in {stage for stage, _, _ in model_jobs(ensemble, "both", counts)}
    rules = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    sharded = {"explain", "invariance", "adversarial"}  # rules/sharded.smk builds their rules from one table
    assert [s for s in STAGE_ON if s not in sharded and not re.search(rf"^rule {s}:", rules, re.M)] == []


def test_method_agreement_is_the_rank_correlation_of_the_maps_and_skips_what_cannot_be_compared(tmp_path):
    from cvaudit.core.files import read_json, save_npz, write_failure
    from cvaudit.explain.method_agreement import run_method_agreement
    rng = np.random.default_rng(0)
    a = rng.random((5, 8, 8)).astype(np.float32)
    files = {}
    for name, label, maps, ok in (("saliency", "Saliency", a, True), ("copy", "Copy", a * 3 + 1, True),
                                  ("flipped", "Flipped", -a, True), ("cam", "CAM", None, False),
                                  ("random", "Random", rng.random((5, 8, 8)), True)):
        files[name] = tmp_path / f"{name}.npz"
        save_npz(files[name], {"label": label, "applicable": ok}, **({"maps_pred": maps} if ok else {}))
    files["lime"] = tmp_path / "lime.npz"
    write_failure(files["lime"], {"rule": "explain", "error": "out of memory"})  # a stage that crashed
    res = run_method_agreement(files, tmp_path / "agreement.json")
    assert res == read_json(tmp_path / "agreement.json")
    assert res["methods"] == ["Saliency", "Copy", "Flipped"]  # not applicable, failed and the random floor left out
    m = np.array(res["matrix"])
    assert np.allclose(np.diag(m), 1) and np.isclose(m[0, 1], 1) and np.isclose(m[0, 2], -1) and np.allclose(m, m.T)
    alone = run_method_agreement({"saliency": files["saliency"]}, tmp_path / "alone.json")
    assert alone == {"methods": ["Saliency"], "matrix": None}


def test_side_by_side_round_trips_what_the_comparison_shows(tmp_path, monkeypatch):
    from cvaudit.report import side_by_side
    shared = {"files": ["a.png", "b.png"], "true": ["bag", "trouser"], "models": {
        "cnn.v2": {"images": np.zeros((2, 4, 4, 3), np.uint8), "preds": np.array([0, 1]),
                   "confidence": np.array([0.9, 0.6], np.float32), "class_names": ["bag", "trouser"],
                   "maps": {"gradcam": np.ones((2, 4, 4), np.float32), "integrated_gradients": None},
                   "reasons": {"integrated_gradients": "not here"}},
        "mlp": {"images": np.ones((2, 4, 4, 3), np.uint8), "preds": np.array([1, 1]),
                "confidence": np.array([0.5, 0.7], np.float32), "class_names": ["bag", "trouser"],
                "maps": {"gradcam": None, "integrated_gradients": np.full((2, 4, 4), 2, np.float32)},
                "reasons": {"gradcam": "no conv"}}}}
    monkeypatch.setattr(side_by_side, "explain_side_by_side", lambda *a, **k: shared)
    side_by_side.run_side_by_side({}, None, ["gradcam", "integrated_gradients"], {}, 2, 0, "cpu", 1,
                                  out=tmp_path / "side.npz")
    back = side_by_side.load_side_by_side(tmp_path / "side.npz")
    assert back["files"] == shared["files"] and back["true"] == shared["true"]
    assert back["labels"] == {"gradcam": "Grad-CAM", "integrated_gradients": "Integrated gradients"}
    assert list(back["models"]) == ["cnn.v2", "mlp"]  # a model name with a dot survives
    for name, r in shared["models"].items():
        b = back["models"][name]
        assert b["reasons"] == r["reasons"] and b["class_names"] == r["class_names"]
        for k in ("images", "preds", "confidence"):
            assert np.array_equal(b[k], r[k])
        for m, v in r["maps"].items():
            assert (b["maps"][m] is None) if v is None else np.array_equal(b["maps"][m], v)


def test_named_concepts_add_a_tcav_job_per_model_with_layers_and_say_why_not_for_the_others(tmp_path):
    from cvaudit.estimate import model_jobs
    from cvaudit.sections import concept_inputs, not_applicable, report_settings
    counts = {"train": 600, "val": 100, "test": 300}
    assert not stage_on(DEMO, "cnn_fmnist", "tcav") and "concepts" not in by_section(report_inputs(DEMO, "cnn_fmnist"))
    folder = tmp_path / "mark"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "notes.txt").write_text("")
    cfg = copy.deepcopy(DEMO)
    cfg["concepts"] = {"mark": {"path": str(folder), "forbidden": True}}
    cfg["models"]["both"] = {**cfg["models"]["cnn_fmnist"], "arch": "ensemble", "members": ["cnn_fmnist"]}
    assert concept_inputs(cfg) == [str(folder / f"{i}.png") for i in range(3)]  # images only, hidden ones left out
    assert stage_on(cfg, "cnn_fmnist", "tcav") and "tcav" in {s for s, _, _ in model_jobs(cfg, "cnn_fmnist", counts)}
    assert by_section(report_inputs(cfg, "cnn_fmnist"))["concepts"] == {"results": "results/cnn_fmnist/explain/tcav.json"}
    assert not stage_on(cfg, "both", "tcav") and "tcav" not in {s for s, _, _ in model_jobs(cfg, "both", counts)}
    settings = report_settings(cfg)
    assert "ensemble" in not_applicable(cfg["models"]["both"], settings)["concepts"]
    assert "concepts" not in not_applicable(cfg["models"]["cnn_fmnist"], settings)
    cfg["explain"]["tcav"]["enabled"] = False
    assert not stage_on(cfg, "cnn_fmnist", "tcav") and "concepts" not in not_applicable(cfg["models"]["both"], report_settings(cfg))


def test_one_job_per_stage_covers_each_item_once_and_the_estimate_counts_one_start():
    """split_jobs false: a model's methods, families and attacks run in one job per stage, so the estimate counts
    one job start per stage and a smaller start for each further item where it counted a job start per item; an
    export's attacks (not the configured ones) stay one job each."""
    from cvaudit.estimate import ITEM_START, START_UP, estimate
    from cvaudit.sections import one_job, stage_items
    cfg = copy.deepcopy(DEMO)
    cfg["models"] = {"cnn": cfg["models"]["cnn_fmnist"], "box": {**cfg["models"]["cnn_fmnist"], "arch": "onnx:box.onnx"}}
    assert stage_items(cfg, "explain", "cnn") == [*cfg["explain"]["methods"], "random"]
    assert stage_items(cfg, "invariance", "cnn") == list(cfg["robustness"]["invariance"])
    assert stage_items(cfg, "adversarial", "cnn") == cfg["robustness"]["adversarial"]["attacks"]
    assert stage_items(cfg, "adversarial", "box") == ["square"]
    assert not any(one_job(cfg, s, m) for s in ("explain", "invariance", "adversarial") for m in ("cnn", "box"))
    split = estimate(cfg, measure=False, results="/nonexistent")
    cfg["split_jobs"] = False
    assert [one_job(cfg, s, m) for s in ("explain", "invariance", "adversarial") for m in ("cnn", "box")] == \
        [True, True, True, True, True, False]
    one = estimate(cfg, measure=False, results="/nonexistent")
    saved = sum(len(stage_items(cfg, s, "cnn")) - 1 for s in ("explain", "invariance", "adversarial")) + \
        sum(len(stage_items(cfg, s, "box")) - 1 for s in ("explain", "invariance"))
    assert saved >= 20
    assert split["job_seconds"] - one["job_seconds"] == pytest.approx(saved * (START_UP - ITEM_START))
    assert [r["stage"] for r in split["rows"]] == [r["stage"] for r in one["rows"]]
