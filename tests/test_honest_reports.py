"""Reports that never mislead (issue 21): a report is built from exactly the data it names."""
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
