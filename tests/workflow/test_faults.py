"""Faults: a training job or Snakemake itself killed with SIGKILL mid-run, then a rerun, gives the same
numbers as an uninterrupted run and leaves no half-written output; a second run in the same folder is
refused with Snakemake's lock message."""
import csv
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from conftest import REPO, SNAKEMAKE, TINY, smk

pytestmark = pytest.mark.e2e  # runs the workflow through snakemake

TARGET = "results/cnn_tiny/train/metrics.json"
EPOCHS = 150  # about 5 s of training: time to interrupt it


def _workdir(root, name):
    work = root / name
    (work / "images").mkdir(parents=True)
    for p in TINY.glob("*/fm*.png"):
        (work / "images" / p.parent.name).mkdir(exist_ok=True)
        shutil.copy(p, work / "images" / p.parent.name / p.name)
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = str(work / "images")
    cfg["models"] = {"cnn_tiny": {**cfg["models"]["cnn_tiny"],
                                  "train": {"batch_size": 4, "head_epochs": EPOCHS, "finetune_epochs": 0, "lr": 0.01,
                                            "patience": 100}}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return work


def _start(work):
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2", TARGET,
           "--configfile", str(work / "config.yaml")]
    # its own process group, as a terminal's foreground job, so Ctrl-C reaches Snakemake and its jobs alike;
    # SIGINT handling restored, as a terminal has it (a shell running tests in the background ignores it)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _training_pid(work, timeout=240):
    """The PID of the train_model job once it is a few epochs in (its log says so)."""
    log = work / "logs" / "train_model" / "cnn_tiny.log"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.exists() and "epoch 3" in log.read_text():
            out = subprocess.run(["pgrep", "-f", f"{work}/.snakemake/scripts/.*train_model.py"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                return int(out[0])
        time.sleep(0.2)
    raise AssertionError(f"the training job did not start within {timeout} s")


def _numbers(work):
    from safetensors.torch import load_file
    weights = load_file(str(work / "results" / "cnn_tiny" / "model.safetensors"))
    with open(work / "results" / "cnn_tiny" / "train" / "history.csv", newline="") as f:
        history = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    return weights, history


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The training target run once, uninterrupted, with the run-time estimate on: (folder, what it said)."""
    work = _workdir(tmp_path_factory.mktemp("faults"), "clean")
    p = smk(work, TARGET, "--configfile", str(work / "config.yaml"), env={"CVAUDIT_ESTIMATE": "1"})
    return work, p.stderr


@pytest.fixture(scope="module")
def uninterrupted(clean_run):
    return _numbers(clean_run[0])


def test_a_run_starts_with_the_estimate_of_the_jobs_it_will_run(clean_run):
    """Before any job: the expected time of this plan's jobs (ingestion and training here, nothing else)."""
    said = clean_run[1]
    head = said[said.index("cvaudit: estimated run time about"):].split("\n")
    table = "\n".join(head[:12])
    assert said.index("cvaudit: estimated run time") < said.index("rule train_model")
    assert "train" in table and "ingest" in table and "per model: " in table
    assert "explain" not in table and "report" not in table and "from scratch" not in head[0]


def _same(a, b):
    (wa, ha), (wb, hb) = a, b
    assert ha == hb and len(ha) == EPOCHS
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.parametrize("who, sig", [("job", signal.SIGKILL), ("snakemake", signal.SIGINT)])
def test_a_training_job_killed_or_interrupted_mid_run_reruns_to_the_same_numbers(tmp_path, uninterrupted, who, sig):
    """kill -9 of the training job, or Ctrl-C (SIGINT to the run's process group, as a terminal sends it):
    no half-written output, and a rerun gives the same numbers."""
    work = _workdir(tmp_path, "job")
    run = _start(work)
    pid = _training_pid(work)
    if who == "job":
        os.kill(pid, sig)
    else:
        os.killpg(run.pid, sig)
    out, _ = run.communicate(timeout=120)
    assert run.returncode != 0 and ("Error in rule train_model" in out or who == "snakemake"), out[-2000:]
    if who == "snakemake":  # the user is told what finished, what was cut short and how to resume
        said = out[out.index("cvaudit: interrupted."):]
        assert said.startswith("cvaudit: interrupted. 1 of 2 job(s) had finished and are kept: ingest_dataset "
                               "(dataset=tiny)."), said
        assert "Cut short (1, their partial outputs removed): train_model (model=cnn_tiny)." in said
        assert "run the same command again" in said and "Traceback" not in out  # the job stops with a line too
    else:
        assert "cvaudit: interrupted" not in out  # a job that failed is not an interruption
    assert not (work / "results" / "cnn_tiny" / "model.safetensors").exists()  # nothing half-written
    assert not list((work / "results" / "cnn_tiny").glob(".*.safetensors"))  # no temp file left either
    smk(work, TARGET, "--configfile", str(work / "config.yaml"))  # the plain rerun
    _same(_numbers(work), uninterrupted)


def test_snakemake_killed_mid_run_is_unlocked_and_reruns_to_the_same_numbers(tmp_path, uninterrupted):
    work = _workdir(tmp_path, "snakemake")
    run = _start(work)
    job = _training_pid(work)
    second = smk(work, TARGET, "--configfile", str(work / "config.yaml"), check=False)  # a second run, same folder
    assert second.returncode != 0 and "Directory cannot be locked" in second.stdout + second.stderr
    run.send_signal(signal.SIGKILL)  # Snakemake itself, then its orphaned job
    run.wait(timeout=60)
    os.kill(job, signal.SIGKILL)
    stale = smk(work, TARGET, "--configfile", str(work / "config.yaml"), check=False)
    assert stale.returncode != 0 and "--unlock" in stale.stdout + stale.stderr  # the stale lock, as the README says
    smk(work, TARGET, "--configfile", str(work / "config.yaml"), "--unlock")
    smk(work, TARGET, "--configfile", str(work / "config.yaml"), "--rerun-incomplete")
    _same(_numbers(work), uninterrupted)


@pytest.mark.parametrize("folder, target", [
    ("results/data/tiny", "results/data/tiny/manifest.csv"),          # ingest
    ("results/cnn_tiny", "results/cnn_tiny/model.safetensors"),       # training
    ("results/cnn_tiny/robust", "results/cnn_tiny/robust/calibration.json"),  # an analysis stage
    ("results/cnn_tiny/report", "results/cnn_tiny/report/summary.json"),      # the report, on a rerun
    ("results/compare", "results/compare/summary.json"),              # the comparison
    ("results", "results/gate.json"),                                 # the gate
])
def test_a_read_only_output_folder_stops_the_run_before_any_job_naming_it(run, folder, target):
    """Each stage's output folder made unwritable in turn (immutable: even root cannot write in it), then that
    stage rerun: one line names the folder and the fix, no traceback, and nothing ran."""
    before = (run / target).stat().st_mtime_ns
    subprocess.run(["chattr", "+i", str(run / folder)], check=True)
    try:
        p = smk(run, target, "--forcerun", target, "--configfile", str(run / "config.yaml"), check=False)
    finally:
        subprocess.run(["chattr", "-i", str(run / folder)], check=True)
    assert p.returncode != 0
    said = p.stdout + p.stderr
    assert f"cvaudit: cannot write in {folder} (Operation not permitted)" in said
    assert "Traceback" not in said and "PermissionError" not in said
    assert (run / target).stat().st_mtime_ns == before
