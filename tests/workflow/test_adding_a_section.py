"""The recipe for a new report section (CONTRIBUTING.md): its template, one Section entry in cvaudit/sections.py
naming its files, builder and summary entry, and the builder's module. Nothing else changes: the report of the
session's run, rendered again with a toy section added that way, shows it and gives it its summary.json entry."""
import json
import shutil

import numpy as np
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.e2e  # reads the session's workflow run

TOY = '''
import numpy as np


def build(files):
    with np.load(files["probs"]) as z:
        return {"n": int(len(z["probs"])), "right": int((z["probs"].argmax(1) == z["targets"]).sum())}


def summary(built):
    return None if built is None else {"test_images": built["n"], "right": built["right"]}
'''


def test_a_toy_section_needs_a_template_an_entry_and_its_builder(run, tmp_path, monkeypatch):
    from cvaudit import sections
    from cvaudit.config import validate_config
    from cvaudit.paths import path
    from cvaudit.report import render_report
    (tmp_path / "toy_section.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    (templates / "sections" / "toy.html.j2").write_text(
        '<section id="toy"><h2>Toy</h2><p>right on {{ section.right }} of {{ section.n }} test images</p></section>\n')
    toy = sections.Section("toy", "A toy section", lambda config, model: {"probs": path("probs", model=model)},
                           build="toy_section:build", summary="toy_section:summary")
    entries = [*sections.SECTIONS[:-1], toy, sections.SECTIONS[-1]]  # before the appendix
    monkeypatch.setattr(sections, "SECTIONS", entries)
    monkeypatch.setattr(sections, "BY_ID", {s.id: s for s in entries})
    monkeypatch.setattr(render_report, "SECTIONS", entries)

    cfg = validate_config(yaml.safe_load((run / "config.yaml").read_text()))
    model, dataset = "cnn_tiny", cfg["models"]["cnn_tiny"]["dataset"]
    monkeypatch.chdir(run)
    inputs = {"manifest": path("manifest", dataset=dataset), "dataset_info": path("dataset_info", dataset=dataset),
              "rejected": path("rejected", dataset=dataset), "train_metrics": path("train_metrics", model=model),
              "history": path("history", model=model), "eval_metrics": path("eval_metrics", model=model),
              "audit_set": path("audit_set", model=model), **sections.report_inputs(cfg, model)}
    assert "toy__probs" in inputs
    render_report.render_report(model, inputs, cfg["models"][model], cfg["datasets"][dataset],
                                sections.report_settings(cfg), template=templates / "report.html.j2",
                                css=templates / "report.css", out_html=tmp_path / "report.html",
                                out_summary=tmp_path / "summary.json", out_evidence=tmp_path / "evidence")
    html = (tmp_path / "report.html").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    with np.load(run / path("probs", model=model)) as z:  # the evaluation's own counts, read independently
        n, right = len(z["probs"]), int((z["probs"].argmax(1) == z["targets"]).sum())
    assert summary["toy"] == {"test_images": n, "right": right} and n > 0
    assert f"right on {right} of {n} test images" in html
    toc = html.split('href="#')
    ids = [t.split('"')[0] for t in toc[1:]]
    assert "toy" in ids and ids.index("toy") == ids.index("appendix") - 1  # in the table of contents, in its place
    # the rest of the report is the run's own: the same summary but for the toy's entry, the provenance and the
    # findings (their projected run times read the run's job times, not passed here)
    own = json.loads((run / path("summary", model=model)).read_text())
    for doc in (own, summary):
        doc.pop("provenance"), doc.pop("toy", None), doc.pop("findings")
    assert summary == own
