"""Regeneration is minimal: after a complete run of two datasets with one model each, a dry run shows
exactly which jobs a change reruns (Snakemake's mtime, params and input-set triggers)."""
import os
import re
import shutil
import time

import pytest
import yaml

from conftest import REPO, TINY, smk, workflow_lock

pytestmark = pytest.mark.e2e


def jobs(work, config="config.yaml") -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run would run ('' for a job without wildcards)."""
    out = smk(work, "--dry-run", "--configfile", str(work / config)).stdout
    found = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            w = re.search(r"^\s+wildcards: (.+)$", block, re.M)
            found.add((m.group(1), w.group(1).strip() if w else ""))
    return found


def rules_of(found) -> dict:
    out = {}
    for rule, _ in found:
        out[rule] = out.get(rule, 0) + 1
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    work = tmp_path_factory.mktemp("reruns")
    for d in ("a", "b"):
        shutil.copytree(TINY, work / d)
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"] = {d: {"source": "imagefolder", "path": str(work / d), "split": {"val": 0.2, "test": 0.3}}
                       for d in ("a", "b")}
    cfg["models"] = {"cnn_a": {**cfg["models"]["cnn_tiny"], "dataset": "a"},
                     "mlp_b": {"dataset": "b", "arch": "mlp", "arch_options": {"hidden": [32]}, "input_size": 28,
                               "train": {"batch_size": 8, "head_epochs": 1, "finetune_epochs": 0}}}
    cfg["split_jobs"] = True  # one job per method, family and attack: what these tests count
    cfg["explain"]["methods"] = ["saliency", "integrated_gradients"]
    cfg["represent"] = {"enabled": False}
    cfg["robustness"].update(invariance={"rotate": [0, 15]}, corruptions={"enabled": False},
                             shape_texture={"enabled": False})
    cfg["robustness"]["adversarial"].update(max_images=4)
    cfg["clever_hans"] = {"enabled": False}
    cfg["data_audit"] = {"enabled": False}
    cfg["report"] = {"pdf": False}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    smk(work, "--configfile", str(work / "config.yaml"))
    return work, cfg


def variant(work, cfg, name, change) -> str:
    c = yaml.safe_load(yaml.safe_dump(cfg))
    change(c)
    (work / name).write_text(yaml.safe_dump(c))
    return name


def test_a_second_run_does_nothing(two):
    work, _ = two
    assert jobs(work) == set()


def test_the_same_settings_in_another_order_or_with_a_default_written_out_rerun_nothing(two):
    """Snakemake compares a rule's params by their repr: without the canonical order a config whose keys come
    in another order (a hand edit, or a tool that writes YAML sorted) reruns every job."""
    work, cfg = two

    def backwards(x):
        if isinstance(x, dict):
            return {k: backwards(x[k]) for k in reversed(list(x))}
        return [backwards(v) for v in x] if isinstance(x, list) else x
    c = {k: ({n: backwards(v) for n, v in cfg[k].items()} if k in ("models", "datasets") else backwards(cfg[k]))
         for k in cfg}
    c["models"]["mlp_b"]["train"]["lr"] = 0.001  # the default, written out
    (work / "reordered.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
    assert jobs(work, "reordered.yaml") == set()


def test_touching_or_restoring_the_images_reruns_nothing(two):
    work, _ = two
    later = time.time() + 120
    for p in (work / "a").rglob("*"):  # a touch, as after a checkout of a data repository
        if p.is_file():
            os.utime(p, (later, later))
    shutil.copytree(work / "b", work / "b.restored")  # a restore from backup: new files, the same bytes
    shutil.rmtree(work / "b")
    (work / "b.restored").rename(work / "b")
    assert jobs(work) == set()


def test_a_mistyped_dataset_path_after_a_good_run_stops_before_planning(two):
    """Results of the old data must never be re-rendered as the new path's."""
    work, cfg = two
    name = variant(work, cfg, "moved.yaml", lambda c: c["datasets"]["a"].update(path=str(work / "a_typo")))
    p = smk(work, "--dry-run", "--configfile", str(work / name), check=False)
    assert p.returncode != 0 and "render_report" not in p.stdout
    assert f"config key 'datasets.a.path': {work / 'a_typo'} is not an existing folder" in p.stdout + p.stderr


def test_a_file_only_the_rejected_list_sees_still_updates_the_report(two):
    """The manifest does not change (a corrupt file is rejected), so only files the report reads beside
    it change: they are declared inputs, so the report follows. Run in a copy of the project folder (the
    dataset's folder is shared), up to one report."""
    work, _ = two
    copy = work.parent / (work.name + "_rejected")
    shutil.copytree(work, copy, symlinks=True)
    bad = work / "a" / "bag" / "broken2.png"
    bad.write_bytes(b"\x89PNG broken")
    try:
        assert rules_of(jobs(copy)).get("ingest_dataset") == 1
        smk(copy, "results/cnn_a/report/report.html", "--configfile", str(copy / "config.yaml"))
        html = (copy / "results" / "cnn_a" / "report" / "report.html").read_text()
        assert "Rejected files (5)" in html and "broken2.png" in html
    finally:
        bad.unlink()
        shutil.rmtree(copy)
    assert jobs(work) == set()  # the original folder: back to its recorded input set


def test_a_copied_project_folder_plans_nothing_and_a_mistake_there_is_named(two):
    """A project folder copied elsewhere (results, Snakemake's records, config) is up to date there; a
    mistyped dataset path in the copy stops before planning, never a FileNotFoundError mid-run."""
    work, cfg = two
    copy = work.parent / (work.name + "_copy")
    shutil.copytree(work, copy, symlinks=True)
    try:
        assert jobs(copy) == set()
        name = variant(copy, cfg, "typo.yaml", lambda c: c["datasets"]["b"].update(path=str(copy / "bb")))
        p = smk(copy, "--dry-run", "--configfile", str(copy / name), check=False)
        said = p.stdout + p.stderr
        assert p.returncode != 0 and "config key 'datasets.b.path'" in said and "FileNotFoundError" not in said
    finally:
        shutil.rmtree(copy)


def test_editing_a_report_template_reruns_only_the_reports(two):
    work, _ = two
    template = REPO / "templates" / "report.html.j2"
    with workflow_lock(exclusive=True):  # no run on the other worker reads the template meanwhile
        text, before = template.read_text(), template.stat()
        try:  # a real edit: Snakemake compares content, not only the modification time
            template.write_text(text + "{# edited by tests/workflow/test_reruns.py #}\n")
            later = time.time() + 60
            os.utime(template, (later, later))
            assert rules_of(jobs(work)) == {"render_report": 2, "compare_models": 1, "gate": 1, "gate_check": 1,
                                            "all": 1}
        finally:
            template.write_text(text)
            os.utime(template, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert jobs(work) == set()


def test_changing_one_methods_options_reruns_that_method_and_the_reports(two):
    work, cfg = two
    name = variant(work, cfg, "ig.yaml", lambda c: c["explain"]["integrated_gradients"].update(steps=5))
    found = jobs(work, name)
    assert rules_of(found) == {"explain": 2, "method_agreement": 2, "render_report": 2, "compare_models": 1, "gate": 1,
                               "gate_check": 1, "all": 1}
    assert {w for r, w in found if r == "explain"} == {"model=cnn_a, method=integrated_gradients",
                                                        "model=mlp_b, method=integrated_gradients"}


def test_changing_one_models_training_reruns_only_that_models_chain(two):
    work, cfg = two
    name = variant(work, cfg, "lr.yaml", lambda c: c["models"]["cnn_a"]["train"].update(lr=0.02))
    found = jobs(work, name)
    assert not any("mlp_b" in w or "dataset=" in w for _, w in found), found
    assert rules_of(found) == {"train_model": 1, "evaluate_model": 1, "explain": 3, "method_agreement": 1,
                               "calibrate": 1, "invariance": 1, "adversarial": 3, "slices": 1, "render_report": 1,
                               "compare_models": 1, "gate": 1, "gate_check": 1, "all": 1}


def test_adding_an_image_reruns_its_datasets_chain_and_nothing_of_the_other(two):
    work, _ = two
    added = work / "a" / "trouser" / "added.png"
    shutil.copy(next((work / "a" / "bag").glob("fm*.png")), added)
    try:
        found = jobs(work)
        assert ("ingest_dataset", "dataset=a") in found and ("fit_baseline", "dataset=a") in found
        assert not any("dataset=b" in w or "mlp_b" in w for _, w in found), found
        assert rules_of(found)["render_report"] == 1 and rules_of(found)["train_model"] == 1
    finally:
        added.unlink()
    assert jobs(work) == set()  # back to the recorded input set


@pytest.mark.parametrize("change, attack", [
    (lambda a: a["pgd"].update(steps=4), "pgd"),
    (lambda a: a["autoattack"].update(square_queries=21), "autoattack"),
    (lambda a: a["masking"].update(more_steps=3), "autoattack"),
])
def test_changing_one_attacks_settings_reruns_that_attack_alone(two, change, attack):
    """Each attack job receives only the options it reads (cvaudit.core.registry.attack_options): a PGD
    setting leaves the FGSM and autoattack jobs alone."""
    work, cfg = two
    name = variant(work, cfg, f"attack_{attack}.yaml", lambda c: change(c["robustness"]["adversarial"]))
    found = jobs(work, name)
    assert {w for r, w in found if r == "adversarial"} == {f"model={m}, attack={attack}" for m in ("cnn_a", "mlp_b")}
    assert rules_of(found) == {"adversarial": 2, "render_report": 2, "compare_models": 1, "gate": 1,
                               "gate_check": 1, "all": 1}


def test_shared_attack_settings_rerun_every_attack(two):
    work, cfg = two
    name = variant(work, cfg, "attack_all.yaml", lambda c: c["robustness"]["adversarial"].update(examples=2))
    assert rules_of(jobs(work, name))["adversarial"] == 6


def test_with_one_job_per_stage_a_methods_option_reruns_that_stage_of_each_model(run):
    """split_jobs false (the session's run): a model's methods are one job, so a changed method option reruns that
    job, and only that stage's: the invariance and attack jobs are left alone."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["split_jobs"] is False
    cfg["explain"]["integrated_gradients"]["steps"] = 5
    (run / "one_job_ig.yaml").write_text(yaml.safe_dump(cfg))
    found = jobs(run, "one_job_ig.yaml")
    assert {w for r, w in found if r == "explain_model"} == {"model=cnn_tiny", "model=lite0_tiny"}
    assert rules_of(found) == {"explain_model": 2, "method_agreement": 2, "side_by_side": 1, "render_report": 2,
                               "compare_models": 1, "gate": 1, "gate_check": 1, "all": 1}
