"""The pins live in requirements.txt; envs/cvaudit.yaml (conda) must name the same packages and pins."""
import re

import yaml

from conftest import REPO


def _pins(lines):
    return {re.split("==", l)[0].lower(): l.split("==")[1].split("#")[0].strip() for l in lines if "==" in l}


def test_conda_env_matches_requirements():
    files = ("requirements.txt", "requirements-nodeps.txt")
    req = _pins(l.strip() for f in files for l in (REPO / f).read_text().splitlines() if not l.startswith("#"))
    env = yaml.safe_load((REPO / "envs" / "cvaudit.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == req and req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"


def test_readme_opens_with_the_two_commands():
    head = (REPO / "README.md").read_text().splitlines()[:12]
    assert any("make demo" in l for l in head) and any("make test" in l for l in head)
    assert "make test" in (REPO / ".ci" / "run").read_text()
