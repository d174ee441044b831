import contextlib
import fcntl
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
# The run-time estimate times the model before each run (about 3 s); its own tests turn it on.
os.environ.setdefault("CVAUDIT_ESTIMATE", "0")
# Two pytest-xdist workers each run workflows whose jobs take both cores: OpenMP threads that spin while they wait
# (libgomp's default) then take turns on the cores, and a training job ran three times as long as alone; threads
# that sleep while they wait lose about a tenth alone (tools/bench_threads.py). Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# A test that edits a file of the repository's workflow (a report template) holds this lock alone while the edit
# lasts; every snakemake run of the tests holds it shared, so a run on the other pytest-xdist worker never sees the
# edit (Snakemake stops a job whose input template is newer than its output). One file per session (pytest_configure).
_EDITING = False


def pytest_configure(config):
    os.environ.setdefault("CVAUDIT_TEST_WORKFLOW_LOCK",
                          str(Path(tempfile.mkdtemp(prefix="cvaudit-workflow-lock-")) / "lock"))


@contextlib.contextmanager
def workflow_lock(exclusive: bool = False):
    """Shared: a snakemake run of the repository's workflow; exclusive: an edit of one of its files."""
    global _EDITING
    if _EDITING:  # this process edits the workflow: its own runs read the edit
        yield
        return
    with open(os.environ["CVAUDIT_TEST_WORKFLOW_LOCK"], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        _EDITING = exclusive
        try:
            yield
        finally:
            _EDITING = False
            fcntl.flock(f, fcntl.LOCK_UN)


def smk(workdir, *args, check=True, env=None):
    """snakemake on the repository's Snakefile in `workdir`; raises with the output tail unless check=False."""
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    with workflow_lock():
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def planned(workdir, config: str = "config.yaml") -> dict:
    """Jobs a dry run would run, per rule (from Snakemake's job stats table)."""
    out = smk(workdir, "--dry-run", "--configfile", str(workdir / config)).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


HEARTBEAT_S = 2  # seconds between progress lines in the end-to-end runs' logs (30 by default)


def tiny_workflow(work: Path, change, env=None) -> subprocess.CompletedProcess:
    """config/test.yaml, changed by change(cfg, images), run end to end in `work` on a copy of the tiny images,
    every stage failing if it reads a file its rule does not declare (CVAUDIT_CHECK_READS), every job writing a
    progress line to its log every HEARTBEAT_S seconds."""
    shutil.copytree(TINY, work / "images")
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = str(work / "images")
    change(cfg, work / "images")
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    os.environ.update(CVAUDIT_CHECK_READS="1", CVAUDIT_HEARTBEAT_S=str(HEARTBEAT_S))
    try:
        return smk(work, "--configfile", str(work / "config.yaml"), env=env)
    finally:
        del os.environ["CVAUDIT_CHECK_READS"], os.environ["CVAUDIT_HEARTBEAT_S"]


# `make test` runs the suite on two pytest-xdist workers (--dist loadgroup --no-loadscope-reorder). A group runs on
# one worker, so a workflow run made by a fixture is made once: the tests that read the session's run share the
# group "run", and a module whose fixture runs a workflow is one group. The session's run goes first (its jobs'
# times are what the run-time estimate is checked against: meanwhile the other worker's tests run niced,
# pytest_runtest_protocol); then the unit tests and the other workflow runs, longest first.
LONG_FIRST = ["test_shortcut_workflow", "test_vit_workflow", "test_reruns", "test_faults", "test_report_view",
              "test_honest_report_runs", "test_own_model", "test_shape_texture", "test_shards", "test_bad_input_runs"]


def pytest_itemcollected(item):  # as each test is collected: before pytest-xdist reads the groups
    scopes = {d.scope for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs}
    if "run" in item.fixturenames:
        group = "run"
    elif "module" in scopes or item.get_closest_marker("e2e"):
        group = item.module.__name__
    else:
        return
    item.add_marker(pytest.mark.xdist_group(group))
    if getattr(item.config.option, "loadgroup", False) and "@" not in item.nodeid:
        # pytest-xdist 3.8 names a group in the test's id (`id@group`) through an attribute pytest 9 no longer
        # reads (_nodeid); the scheduler reads the id, so name it here
        from _pytest.nodeid import NodeId
        item._id = NodeId.parse(f"{item.nodeid}@{group}")


def pytest_collection_modifyitems(config, items):
    def rank(item):  # the session's run, the unit tests, the other workflow runs longest first, the rest
        marks = [m.args[0] for m in item.iter_markers("xdist_group")]
        if not marks:
            return 1
        return 0 if marks[0] == "run" else 2 + (LONG_FIRST.index(marks[0]) if marks[0] in LONG_FIRST else len(LONG_FIRST))
    items.sort(key=rank)  # stable: the order within a group is kept


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker():
    """Two workers on two cores: each runs torch on one thread (the workflow runs keep their own settings)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        torch.set_num_threads(1)


def _quiet_lock(config) -> Path | None:
    """Under pytest-xdist: a lock file the workers share while the session's run works (None in one process)."""
    worker = getattr(config, "workerinput", None)
    return None if worker is None else Path(tempfile.gettempdir()) / f"cvaudit-quiet-{worker['testrunuid']}.lock"


def _session_run_busy(lock: Path) -> bool:
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """On the other worker, each test that starts while the session's run works runs at the lowest CPU priority
    (niceness 19, inherited by the workflows it starts): that run's job times are what the run-time estimate is
    checked against, and a niced process takes only the CPU that run leaves idle (its jobs' start-up, mostly one
    core). Once that run is done, later tests run at normal priority again where the system allows it (root)."""
    lock = _quiet_lock(item.config)
    if lock is not None and "run" not in item.fixturenames:
        if _session_run_busy(lock):
            _renice(19)
        elif os.getpriority(os.PRIO_PROCESS, 0) == 19:
            try:
                _renice(0)
            except PermissionError:  # only root lowers its niceness: stay niced, the suite still runs
                pass
    cpu_log = os.environ.get("CVAUDIT_TEST_CPU_LOG")  # tools/profile_tests.py: where the suite's CPU goes
    if cpu_log:
        before = _cpu_seconds(), time.perf_counter()
    yield
    if cpu_log:
        groups = [m.args[0] for m in item.iter_markers("xdist_group")]
        with open(cpu_log, "a") as f:
            f.write(f"{item.nodeid.split('@')[0]}\t{groups[0] if groups else '-'}\t"
                    f"{time.perf_counter() - before[1]:.2f}\t{_cpu_seconds() - before[0]:.2f}\n")


def _cpu_seconds() -> float:
    """User and system CPU of this process and of every child it has waited for (and theirs, recursively)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _renice(value: int) -> None:
    """Every thread of this process at `value`: Linux keeps a niceness per thread, and the thread pools numpy's
    BLAS and torch started at import stay at theirs (measured: a BLAS thread left at 0 took a third of a core
    from two jobs at 0, all threads at 19 took a tenth of one). Threads started later inherit the main thread's."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), value)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


@pytest.fixture(scope="session")
def run(tmp_path_factory, request):
    """The test config (config/test.yaml) run end to end once per session, on a copy of the tiny images."""
    def shifted(cfg, images):  # the same images as a "shifted" test set: the shift stage must leave out those cnn_tiny trained on
        cfg["datasets"]["tiny_again"] = {"source": "imagefolder", "path": str(images),
                                         "split": {"val": 0.0, "test": 1.0}, "description": "the tiny images again"}
        cfg["models"]["cnn_tiny"]["shift_sets"] = ["tiny_again"]
        marked(cfg, images)

    def marked(cfg, images):  # a concept: tiny images of every class with a white square in the top-left corner
        from PIL import Image
        folder = images.parent / "concepts" / "corner_mark"
        folder.mkdir(parents=True)
        for i, f in enumerate(sorted(images.rglob("fm*.png"))[::4][:12]):
            im = Image.open(f).convert("RGB")
            im.paste((255, 255, 255), (0, 0, 6, 6))
            im.save(folder / f"{i}.png")
        cfg["concepts"] = {"corner_mark": {"path": str(folder), "forbidden": True, "description": "a white corner square"}}
    work = tmp_path_factory.mktemp("e2e")
    # with the run-time estimate, as a user's run: the model timings it takes at the start are cached in the run's
    # folder, and the estimate's test compares that estimate with the run
    lock = _quiet_lock(request.config)
    with open(lock or os.devnull, "a") as f:
        if lock:
            fcntl.flock(f, fcntl.LOCK_EX)  # the other worker's tests run niced until this run is done
        p = tiny_workflow(work, shifted, env={"CVAUDIT_ESTIMATE": "1"})
    (work / "run.stderr").write_text(p.stderr)  # what the user saw
    return work


@pytest.fixture
def tiny_copy(tmp_path) -> Path:
    """A writable copy of the committed real-image fixture (3 classes + 4 bad files)."""
    dst = tmp_path / "tiny"
    shutil.copytree(TINY, dst)
    return dst


@pytest.fixture
def clean_folder(tmp_path) -> Path:
    """The fixture's good images only (no bad files), as an imagefolder."""
    dst = tmp_path / "clean"
    for p in TINY.glob("*/fm*.png"):
        (dst / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst / p.parent.name / p.name)
    return dst


def fit(net, x, y, steps: int, lr: float = 0.01):
    """Full-batch Adam on (x, y) for `steps` steps, then eval mode: a small real model for tests."""
    import torch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def fmnist_images(n: int, seed: int = 0):
    """n real Fashion-MNIST training images (28 x 28 grey, as RGB uint8) and their labels."""
    import numpy as np

    from cvaudit.data.sources import read_idx
    images = read_idx(FMNIST / "train-images-idx3-ubyte.gz", 3)
    labels = read_idx(FMNIST / "train-labels-idx1-ubyte.gz", 1)
    pick = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return np.repeat(images[pick][..., None], 3, -1), labels[pick]


def reencoded(rgb, size: int, quality: int):
    """An image shrunk to `size` px, saved as JPEG at `quality`, and read back at 28 px: a copy a hash still finds."""
    import io

    import numpy as np
    from PIL import Image
    im = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((28, 28), Image.BILINEAR))
