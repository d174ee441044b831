"""Reports that never mislead (issue 21): a report is built from exactly the data it names."""
from pathlib import Path

import pytest

from cvaudit import CvauditError


def test_the_comparison_refuses_reports_of_one_dataset_built_from_different_data():
    from cvaudit.compare import same_data
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
])
def test_every_path_in_the_config_is_checked_before_planning(tmp_path, change, words):
    import yaml

    from conftest import TINY
    from cvaudit.config import SCHEMA, check_paths, validate_config
    cfg = yaml.safe_load((SCHEMA.parent / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = str(TINY)
    validate_config(cfg)
    check_paths(cfg, tmp_path)
    change(cfg, tmp_path)
    with pytest.raises(CvauditError, match=words):
        check_paths(cfg, tmp_path)


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    import shutil

    import yaml

    from conftest import REPO, TINY, smk
    from cvaudit.data import read_manifest
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
