import copy

import pytest
import yaml

from cvaudit import CvauditError
from cvaudit.config import validate_config

from conftest import REPO

DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_demo_and_test_configs_validate_and_get_defaults():
    c = validate_config(copy.deepcopy(DEMO))
    assert c["models"]["lite0_imagenet"]["train"] is False
    t = c["models"]["mlp_fmnist"]["train"]
    assert t["patience"] == 3 and t["augment"]["erasing"] == 0.0  # defaults filled from the schema, nested too
    assert c["explain"]["gradcam"]["layer"] == "auto"
    assert c["datasets"]["imagenet_samples"]["split"] == {"val": 0.0, "test": 1.0}
    validate_config(yaml.safe_load((REPO / "config" / "test.yaml").read_text()))


@pytest.mark.parametrize("mutate, key, words", [
    (lambda c: c["models"]["cnn_fmnist"].update(epochz=3), "models.cnn_fmnist", "epochz"),
    (lambda c: c["models"]["cnn_fmnist"]["train"].update(batch_size="big"), "models.cnn_fmnist.train", "batch_size"),
    (lambda c: c["models"]["cnn_fmnist"].update(dataset="nope"), "models.cnn_fmnist.dataset", "unknown dataset 'nope'"),
    (lambda c: c["datasets"]["fmnist"].update(source="zip"), "datasets.fmnist.source", "zip"),
    (lambda c: c.update(seeed=1), "<top level>", "seeed"),
    (lambda c: c["models"]["mlp_fmnist"].update(arch="resnet"), "models.mlp_fmnist.arch", "resnet"),
    (lambda c: c["datasets"]["fmnist"]["split"].update(val=0.6, test=0.6), "datasets.fmnist.split", "at most 1"),
    (lambda c: c["models"]["lite0_imagenet"].update(weights="packaged:vgg"), "models.lite0_imagenet.weights", "vgg"),
    (lambda c: c["explain"].update(methods=["gradcam", "magic"]), "explain.methods.1", "magic"),
])
def test_bad_config_names_the_key(mutate, key, words):
    c = copy.deepcopy(DEMO)
    mutate(c)
    with pytest.raises(CvauditError) as e:
        validate_config(c)
    assert f"'{key}" in str(e.value) and words in str(e.value)


def test_robustness_check_points_must_be_among_the_severities():
    base = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    validate_config(base)  # the test config is consistent
    bad = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    bad["robustness"]["check_angle"] = 20
    with pytest.raises(CvauditError, match="robustness.check_angle"):
        validate_config(bad)
    bad = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    bad["robustness"]["adversarial"]["check_epsilon"] = 0.5
    with pytest.raises(CvauditError, match="robustness.adversarial.check_epsilon"):
        validate_config(bad)


def test_the_old_randomisation_key_names_both_tests_it_could_mean():
    """robustness.randomisation was Zhang et al.'s shuffled-label test; the name also fits the
    attributions' parameter-randomisation check, so the error names where each now lives."""
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["robustness"]["randomisation"] = {"enabled": True}
    with pytest.raises(CvauditError) as err:
        validate_config(cfg)
    assert "robustness.randomisation" in str(err.value)
    assert "robustness.shuffled_labels" in str(err.value) and "explain.trust.sanity_images" in str(err.value)
    del cfg["robustness"]["randomisation"]
    cfg["robustness"]["shuffled_labels"] = {"enabled": True}
    assert validate_config(cfg)["robustness"]["shuffled_labels"]["epochs"] == 15  # the new key, its defaults


def test_a_config_file_is_read_strictly_and_its_errors_say_where(tmp_path):
    """A key given twice (two models: blocks) names both lines; a YAML error names the line and column and shows
    the line; Snakemake's templating is refused; NaN and infinity are refused wherever they appear."""
    from cvaudit import CvauditError
    from cvaudit.config import validate_config
    from cvaudit.config_file import check_config_file
    dup = tmp_path / "dup.yaml"
    dup.write_text("seed: 1\nmodels:\n  a: {dataset: d, arch: mlp}\ndatasets:\n  d: {source: foolbox_imagenet}\n"
                   "models:\n  b: {dataset: d, arch: mlp}\n")
    with pytest.raises(CvauditError, match=r"dup.yaml: key 'models' is given twice, on line 2 and on line 6"):
        check_config_file(dup)
    nested = tmp_path / "nested.yaml"
    nested.write_text("models:\n  a:\n    dataset: d\n    dataset: e\n")
    with pytest.raises(CvauditError, match="key 'dataset' is given twice, on line 3 and on line 4"):
        check_config_file(nested)
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nmodels:\n  a: {dataset: d, arch: mlp\ndatasets: x\n")
    with pytest.raises(CvauditError, match=r"bad.yaml: not valid YAML at line 4, column 9.*\n    datasets: x\n"):
        check_config_file(bad)
    yte = tmp_path / "yte.yaml"
    yte.write_text("__use_yte__: true\nseed: ?1 + 1\n")
    with pytest.raises(CvauditError, match="__use_yte__"):
        check_config_file(yte)
    check_config_file(REPO / "config" / "config.yaml")  # the demo's passes
    for bad_value in (float("nan"), float("inf")):
        with pytest.raises(CvauditError, match=r"config key 'models.m.train.lr'"):
            validate_config({"datasets": {"d": {"source": "foolbox_imagenet"}},
                             "models": {"m": {"dataset": "d", "arch": "mlp", "train": {"lr": bad_value}}}})


def test_a_preset_fills_in_what_the_config_leaves_out_and_written_settings_win():
    base = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    for k in ("audit", "explain", "robustness", "represent", "clever_hans", "data_audit"):
        base.pop(k, None)
    std = validate_config(copy.deepcopy(base))
    quick = copy.deepcopy(base)
    quick["audit"] = {"preset": "quick"}
    quick["robustness"] = {"adversarial": {"pgd": {"steps": 7}}}
    quick = validate_config(quick)
    adv_s, adv_q = std["robustness"]["adversarial"], quick["robustness"]["adversarial"]
    assert (adv_s["pgd"]["steps"], adv_s["max_images"], adv_s["autoattack"]["square_queries"]) == (50, 100, 5000)
    assert (adv_q["pgd"]["steps"], adv_q["pgd"]["restarts"], adv_q["max_images"]) == (7, 1, 16)  # written wins
    assert adv_q["autoattack"]["square_queries"] == 100 and quick["audit"]["max_images"] == 10
    assert quick["robustness"]["corruptions"]["severities"] == [1, 3, 5] and not quick["represent"]["ascent"]["enabled"]
    thorough = validate_config({**copy.deepcopy(base), "audit": {"preset": "thorough"}})
    assert thorough["robustness"]["adversarial"]["pgd"] == {**adv_s["pgd"], "steps": 100, "restarts": 5}
    with pytest.raises(CvauditError, match="audit.preset"):
        validate_config({**copy.deepcopy(base), "audit": {"preset": "fast"}})


def test_a_run_on_a_cpu_with_gpu_budgets_is_told_which_preset_fits():
    from cvaudit.config import budget_notice
    cfg = validate_config(copy.deepcopy(DEMO))
    said = budget_notice(cfg, gpu=False)
    assert "audit.preset: quick" in said and "no GPU" in said and "224 px" in said
    assert budget_notice(cfg, gpu=True) is None
    cfg["audit"]["preset"] = "quick"
    assert budget_notice(cfg, gpu=False) is None
    small = validate_config(yaml.safe_load((REPO / "config" / "test.yaml").read_text()))
    small["models"] = {k: v for k, v in small["models"].items() if v["input_size"] < 128}
    assert small["models"] and budget_notice(small, gpu=False) is None


def test_the_demo_is_the_showcase_cut_to_two_models_and_every_example_config_validates():
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    assert list(demo["models"]) == ["cnn_fmnist", "cnn_fmnist_shortcut"]
    for kind in ("models", "datasets"):  # one definition: the demo's are the showcase's
        assert all(demo[kind][k] == DEMO[kind][k] for k in demo[kind]), kind
    for name in ("demo", "config", "vit", "test"):
        validate_config(yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()))


def test_the_config_checker_names_the_line_and_column_snakemake_does_not(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "my.yaml"
    bad.write_text("datasets:\n  a: {source: idx\nmodels: [\n")
    p = subprocess.run([sys.executable, str(REPO / "tools" / "check_config.py"), str(bad)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and f"{bad}: not valid YAML at line 3, column 7" in p.stderr and "Traceback" not in p.stderr
    ok = subprocess.run([sys.executable, str(REPO / "tools" / "check_config.py"), str(REPO / "config" / "demo.yaml")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "valid (2 model(s), 3 dataset(s), preset quick)" in ok.stdout


def test_one_job_per_stage_is_asked_for_and_excludes_shards():
    base = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    assert base.pop("split_jobs") is False
    assert validate_config(copy.deepcopy(base))["split_jobs"] is True  # the default: one job per method
    quick = {**copy.deepcopy(base), "audit": {**base["audit"], "preset": "quick"}}
    assert validate_config(copy.deepcopy(quick))["split_jobs"] is True  # a few long jobs side by side on a laptop
    assert validate_config({**copy.deepcopy(base), "shard_size": 4})["split_jobs"] is True
    with pytest.raises(CvauditError, match=r"'split_jobs' is false, .* shard_size 4 .* split_jobs: true, or shard_size: 0"):
        validate_config({**copy.deepcopy(base), "split_jobs": False, "shard_size": 4})
