"""A real single-node SLURM cluster (Debian slurm-wlm + munge, started here by tools/slurm_cluster.sh):
the test config goes through --profile profiles/slurm, every job is an sbatch job, and the model, its numbers
and its maps equal the session's local run."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from conftest import REPO, TINY, smk

pytestmark = pytest.mark.e2e
CLUSTER = REPO / "tools" / "slurm_cluster.sh"
JOBS = 7  # sbatch jobs of small_config: ingest, baseline, train, evaluate, explain (its two methods), report, comparison


def small_config(work, run):
    """The session's run, cut to one model and the jobs that train, evaluate, explain and report it: each kind
    of job once, without the long searches (the numbers must equal the session's)."""
    shutil.copytree(TINY, work / "images")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["datasets"] = {"tiny": {**cfg["datasets"]["tiny"], "path": str(work / "images")}}
    cfg["models"] = {"cnn_tiny": {**cfg["models"]["cnn_tiny"], "shift_sets": []}}
    cfg["explain"]["methods"] = ["gradcam"]
    cfg["represent"] = {"enabled": False}
    cfg["robustness"] = {"enabled": False}
    cfg["clever_hans"] = {"enabled": False}
    cfg["data_audit"] = {"enabled": False}
    cfg["concepts"] = {}
    cfg["report"] = {"pdf": False}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))


def _comparable(x, folder: str):
    """A result with the run's folder and the timings taken out."""
    if isinstance(x, dict):
        return {k: _comparable(v, folder) for k, v in x.items() if k != "seconds"}
    if isinstance(x, list):
        return [_comparable(v, folder) for v in x]
    return x.replace(folder, "") if isinstance(x, str) else x


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the SLURM test starts slurmctld and slurmd and needs root (CI and `make test` run as root)")
    state = tmp_path_factory.mktemp("slurm")
    p = subprocess.run([str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    yield state
    subprocess.run([str(CLUSTER), "stop", str(state)], check=True, timeout=60)


def test_the_test_config_runs_through_slurm_and_matches_a_local_run(slurm, run, tmp_path):
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    small_config(cluster, run)
    p = smk(cluster, "--configfile", str(cluster / "config.yaml"), "--profile", str(REPO / "profiles" / "slurm"),
            "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-keep-successful-logs",
            "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2")
    out = p.stdout + p.stderr
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: ([^)]+)\)", out))
    # every job but the local gate and the `all` target went through sbatch, each with its own SLURM job id
    assert len(submitted) == JOBS, out[-3000:]
    for jobid, log in submitted.items():
        assert log.endswith(f"/{jobid}.log") and os.path.exists(log), log
    assert any("rule_train_model" in log for log in submitted.values())
    # the same model, numbers and maps as the session's local run (the images' folder and the timings aside)
    a, b = (w / "results" / "cnn_tiny" for w in (run, cluster))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    for f in ("eval/probs.npz", "explain/gradcam/maps.npz"):
        za, zb = np.load(a / f), np.load(b / f)
        assert za.files == zb.files and all(np.array_equal(za[k], zb[k], equal_nan=za[k].dtype.kind == "f")
                                             for k in za.files if k not in ("meta", "paths")), f
    x, y = (_comparable(json.loads((d / "eval" / "metrics.json").read_text()), str(w)) for d, w in ((a, run), (b, cluster)))
    assert x == y
    sa, sb = (json.loads((d / "report" / "summary.json").read_text()) for d in (a, b))
    assert sa["attributions"]["gradcam"] == sb["attributions"]["gradcam"]
    ia, ib = sa["metrics"].pop("intervals"), sb["metrics"].pop("intervals")  # the session's has more stages
    assert sa["metrics"] == sb["metrics"] and {k: ia[k] for k in ib} == ib and "accuracy" in ib
    # nothing left in the queue
    q = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=30)
    assert q.returncode == 0 and q.stdout.strip() == ""
