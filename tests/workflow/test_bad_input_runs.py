"""Bad input that only a run shows: an empty config file, class folders named like Snakemake patterns, and a
config checked before Snakemake reads it (the rest of the corpus: tests/unit/test_bad_inputs.py)."""
import pytest

from cvaudit.core.manifest import read_manifest

from conftest import REPO, TINY


@pytest.mark.e2e  # runs snakemake
def test_an_empty_config_file_is_refused_not_replaced_by_the_demo(tmp_path):
    from conftest import smk
    (tmp_path / "empty.yaml").write_text("{}\n")
    p = smk(tmp_path, "--dry-run", "--configfile", str(tmp_path / "empty.yaml"), check=False)
    assert p.returncode != 0 and "empty.yaml is empty" in p.stdout + p.stderr
    assert "lite0_imagenet" not in p.stdout  # the demo's models were not planned


@pytest.mark.e2e  # runs snakemake
def test_class_folders_named_like_snakemake_patterns_run(tmp_path):
    """`<unk>` and `{x}` are class names, never patterns: no image path reaches Snakemake."""
    import yaml

    from conftest import REPO, smk
    root = tmp_path / "imgs"
    for c in ("<unk>", "{x}", "<logs>"):
        (root / c).mkdir(parents=True)
        for k, src in enumerate(sorted(TINY.glob("bag/fm*.png" if c != "{x}" else "sneaker/fm*.png"))[:4]):
            (root / c / f"{c}{k}.png").write_bytes(src.read_bytes() if c != "<logs>" else
                                                   sorted(TINY.glob("trouser/fm*.png"))[k].read_bytes())
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfg["datasets"]["tiny"]["path"] = str(root)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    smk(tmp_path, "results/data/tiny/manifest.csv", "--configfile", str(tmp_path / "c.yaml"))
    rows = read_manifest(tmp_path / "results" / "data" / "tiny" / "manifest.csv")
    assert {r["label"] for r in rows} == {"<unk>", "{x}", "<logs>"} and len(rows) == 12


@pytest.mark.e2e  # runs make (and its set-up check)
def test_make_audit_checks_ones_own_config_before_snakemake_reads_it(tmp_path):
    import subprocess
    bad = tmp_path / "my.yaml"
    bad.write_text("datasets:\n  a: {source: idx\nmodels: [\n")
    made = subprocess.run(["make", "-s", "-C", str(REPO), "audit", f"CONFIG={bad}"], capture_output=True, text=True,
                          timeout=600)
    assert made.returncode != 0 and "line 3, column 7" in made.stderr and "not valid JSON or YAML" not in made.stderr
