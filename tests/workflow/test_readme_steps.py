"""The README's own-data quick start, as written: its config block, pointed at a folder of class folders, passes
step 2 (`make audit CONFIG=my.yaml ARGS=-n`: the config checked, the plan and its run-time estimate printed)."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO, TINY

pytestmark = pytest.mark.e2e  # runs snakemake (a plan: step 3's run of a 224 px model is too long for the suite)


def test_the_readmes_config_plans_an_audit_of_a_folder_of_class_folders(tmp_path):
    readme = (REPO / "README.md").read_text()
    steps = readme.split("## Your own images and model, in three steps")[1].split("\n## ")[0]
    block = re.search(r"```yaml\n(.*?)```", steps, re.S).group(1)
    folder = re.search(r"path: (/\S+?)[,}]", block).group(1)
    for image in TINY.glob("*/fm*.png"):  # real images in class folders, as step 1 asks
        (tmp_path / "leaves" / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, tmp_path / "leaves" / image.parent.name / image.name)
    config = "\n".join(line.removeprefix("   ") for line in block.splitlines())  # the list item's indent
    (tmp_path / "my.yaml").write_text(config.replace(folder, str(tmp_path / "leaves")))
    assert "make audit CONFIG=my.yaml ARGS=-n" in steps
    env = {**os.environ, "CVAUDIT_ESTIMATE": "1"}  # as a user's run (the suite switches it off elsewhere)
    p = subprocess.run(["make", "--no-print-directory", "audit", f"CONFIG={tmp_path / 'my.yaml'}",
                        f"ARGS=-n --directory {tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=env)
    said = p.stdout + p.stderr
    assert p.returncode == 0, said[-3000:]
    assert re.search(r"estimated run time of the whole audit from scratch about \d+ min", said)  # before any job
    model = re.search(r"^  (\w+):\n    dataset: leaves", config, re.M).group(1)
    assert re.search(r"^render_report\s+1$", said, re.M) and re.search(r"^train_model\s+1$", said, re.M)
    assert model in said and f"results/{model}/report/report.html" in steps  # the report the README names
    assert not (REPO / "results" / "data" / "leaves").exists()  # nothing written beside the repository's own
