"""A real single-node SLURM cluster (Debian slurm-wlm + munge, started here by tools/slurm_cluster.sh):
the test config goes through --profile profiles/slurm, every job is an sbatch job, and the reports'
numbers equal a local run's."""
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, TINY, smk

pytestmark = pytest.mark.e2e
CLUSTER = REPO / "tools" / "slurm_cluster.sh"


def small_config(work):
    """One model, one attribution method, calibration, one invariance family, image properties and slices: the
    jobs that train, run and judge a model, each kind once, without the long searches."""
    shutil.copytree(TINY, work / "images")
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = str(work / "images")
    cfg["models"] = {"cnn_tiny": cfg["models"]["cnn_tiny"]}
    cfg["explain"]["methods"] = ["gradcam"]
    cfg["represent"] = {"enabled": False}
    cfg["robustness"].update(invariance={"rotate": [0, 15]}, adversarial={"enabled": False},
                             corruptions={"enabled": False}, shape_texture={"enabled": False})
    cfg["clever_hans"] = {"enabled": False}
    cfg["data_audit"] = {"enabled": False}
    cfg["report"] = {"pdf": False}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the SLURM test starts slurmctld and slurmd and needs root (CI and `make test` run as root)")
    state = tmp_path_factory.mktemp("slurm")
    p = subprocess.run([str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    yield state
    subprocess.run([str(CLUSTER), "stop", str(state)], check=True, timeout=60)


def test_the_test_config_runs_through_slurm_and_matches_a_local_run(slurm, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    for w in (local, cluster):
        w.mkdir()
        small_config(w)
    smk(local, "--configfile", str(local / "config.yaml"))
    p = smk(cluster, "--configfile", str(cluster / "config.yaml"), "--profile", str(REPO / "profiles" / "slurm"),
            "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-keep-successful-logs",
            "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5")
    out = p.stdout + p.stderr
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: ([^)]+)\)", out))
    # every job but the local gate and the `all` target went through sbatch, each with its own SLURM job id
    assert len(submitted) == 12, out[-3000:]
    for jobid, log in submitted.items():
        assert log.endswith(f"/{jobid}.log") and os.path.exists(log), log
    assert any("rule_train_model" in log for log in submitted.values())
    a, b = (json.loads((w / "results" / "cnn_tiny" / "report" / "summary.json").read_text()) for w in (local, cluster))
    assert a["metrics"] == b["metrics"]
    assert [(v["name"], v["value"], v["status"]) for v in a["verdicts"]] == \
        [(v["name"], v["value"], v["status"]) for v in b["verdicts"]]
    assert a["robustness"] == b["robustness"] and a["attributions"] == b["attributions"]
    # nothing left in the queue
    q = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=30)
    assert q.returncode == 0 and q.stdout.strip() == ""
