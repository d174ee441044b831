"""Reports that never mislead, through the workflow: relative config paths, a model built to collapse, a target
given after --configfile."""
from pathlib import Path

import pytest

COLLAPSING_NET = '''
import torch
from torch import nn


class Prior(nn.Module):
    """A real network whose head is biased so hard towards the first class that it predicts nothing else."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)
        with torch.no_grad():
            self.fc.bias[0] = 50.0

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def make(num_classes):
    return Prior(num_classes)
'''


@pytest.mark.e2e  # runs snakemake
def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    import shutil

    import yaml

    from cvaudit.core.manifest import read_manifest

    from conftest import REPO, TINY, smk
    project = tmp_path / "project" / "configs"
    shutil.copytree(TINY, project / "imgs")
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = "imgs"  # beside the config file, not in the working directory
    (project / "c.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "work").mkdir()
    smk(tmp_path / "work", "results/data/tiny/manifest.csv", "--configfile", str(project / "c.yaml"))
    rows = read_manifest(tmp_path / "work" / "results" / "data" / "tiny" / "manifest.csv")
    assert len(rows) == 42 and all((project / "imgs" / r["label"] / Path(r["path"]).name).exists() for r in rows)
    cfg["datasets"]["tiny"]["path"] = "imgz"
    (project / "c.yaml").write_text(yaml.safe_dump(cfg))
    p = smk(tmp_path / "work", "--dry-run", "--configfile", str(project / "c.yaml"), check=False)
    assert p.returncode != 0 and "config key 'datasets.tiny.path': " in p.stdout + p.stderr
    assert str(project / "imgz") in p.stdout + p.stderr  # the path as resolved, so the user sees where it looked


@pytest.mark.e2e
def test_a_model_built_to_collapse_gets_a_diagnosis_and_no_best_marks(tmp_path):
    import json

    import yaml

    from conftest import REPO, TINY, smk
    (tmp_path / "prior.py").write_text(COLLAPSING_NET)
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = str(TINY)
    cfg["models"] = {"prior": {"dataset": "tiny", "arch": f"python:{tmp_path / 'prior.py'}:make", "input_size": 32,
                               "train": False},
                     "cnn_tiny": {**cfg["models"]["cnn_tiny"], "train": {**cfg["models"]["cnn_tiny"]["train"],
                                                                       "head_epochs": 4}}}
    cfg["explain"]["methods"] = ["saliency"]
    cfg["represent"] = {"enabled": False}
    cfg["robustness"].update(invariance={"rotate": [0, 15]}, adversarial={"enabled": False},
                             corruptions={"enabled": False}, shape_texture={"enabled": False})
    cfg["clever_hans"] = {"enabled": False}
    cfg["report"] = {"pdf": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    smk(tmp_path, "--configfile", str(tmp_path / "c.yaml"))
    html = (tmp_path / "results" / "prior" / "report" / "report.html").read_text()
    summary = json.loads((tmp_path / "results" / "prior" / "report" / "summary.json").read_text())
    assert summary["degenerate"]["is"] and summary["degenerate"]["collapsed"]
    assert "Diagnosis: a degenerate model" in html and "BatchNorm statistics" in html and "Collapse" in html
    scored = {v["name"]: v["status"] for v in summary["verdicts"]}
    assert scored["accuracy"] != "n/a" and all(s == "n/a" for k, s in scored.items()  # 13 images: fail or inconclusive
                                               if k.split(":")[0] not in ("accuracy", "gain_over_baseline", "leakage"))
    comp = (tmp_path / "results" / "compare" / "report.html").read_text()
    row = comp.split("<b>prior</b>")[1].split("</tr>")[0]
    assert "degenerate: not ranked" in row and " best" not in row and "≈" not in row


@pytest.mark.e2e  # runs snakemake
def test_a_target_after_configfile_is_named_not_merged_into_the_config(tmp_path):
    import json

    import yaml

    from conftest import REPO, TINY, smk
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = str(TINY)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "results" / "m" / "report").mkdir(parents=True)
    (tmp_path / "results" / "m" / "report" / "summary.json").write_text(json.dumps({"models": {}}))
    target = str(tmp_path / "results" / "m" / "report" / "summary.json")  # as a user in the project folder types it
    p = smk(tmp_path, "--dry-run", "--configfile", str(tmp_path / "c.yaml"), target, check=False)
    said = p.stdout + p.stderr
    assert p.returncode != 0 and "was given after --configfile" in said and "put targets before --configfile" in said
