#!/usr/bin/env python
"""Mutation testing: how many realistic one-line bugs in a verdict module the fast unit tests catch.

    .venv/bin/python tools/mutation.py report.behaviour_checks core.stats   # or: make mutation MODULES="report.behaviour_checks core.stats"
    .venv/bin/python tools/mutation.py --all                # every module in SCOPE below

Runs mutmut (pinned in requirements-dev.txt, installed on first use) on scripts/cvaudit/<subpackage>/<module>.py
with the fast tests only (`pytest -m "not e2e"`: the end-to-end run proves wiring, not arithmetic),
and writes build/mutation/<module>.md: the score and every surviving mutant's diff, plus
build/mutation/scores.json. mutmut wants the package importable by its file path, so the run happens
in a staged copy (build/mutation/stage/<module>) where scripts/cvaudit is src/cvaudit; the repository is not touched.
Each mutant's tests run in a child forked from mutmut's process (fast), or, for modules whose tests start
thread pools (FORKSERVER below), from a fork server that has run no test: a child forked after threads have
started can deadlock on a lock. A timeout therefore never counts as a kill here: it is listed, not scored.

The score counts killed / (all mutants - equivalent ones), over the functions whose output a verdict,
an interval or a ranking reads (SCOPE); a mutant no fast test reaches ("no tests") counts as surviving.
Mutants that cannot change behaviour are listed in tools/mutation_equivalent.txt, one line each with
the reason; the script checks that each listed mutant still has the diff it was judged on.
"""
import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "mutation"
STAGE_ROOT = BUILD / "stage"
EQUIVALENT = REPO / "tools" / "mutation_equivalent.txt"

# Per module: the functions that compute what a verdict, an interval or a ranking reads. The others
# (run_* stage drivers, file reading and writing, HTML) are wiring: the end-to-end tests cover them.
SCOPE = {
    "core.stats": ["*"],
    "core.calibration_error": ["*"],
    "report.behaviour_checks": ["*"],
    "report.shortcut_checks": ["*"],
    "report.attribution_checks": ["*"],
    "report.checks": ["run_checks"],
    "report.compare_models": ["kind_of", "metric_row", "_apart", "mark_best", "gate_problems", "same_data"],
    "model.evaluate_model": ["classification_metrics", "worst_mistakes", "baseline_gain", "choose_audit_set", "degenerate"],
    "explain.trust": ["*"],
    "robust.adversarial": ["_fooled", "fgsm", "pgd", "_apgd", "autoattack", "attack_batch", "_batch_seed", "masking_checks"],
    "robust.calibrate": ["calibration_metrics", "fit_temperature", "scaled", "log_probs"],
    "robust.invariance": ["transform", "translate", "rotate", "scale", "brightness", "contrast", "noise", "blur", "jpeg", "_jpeg", "robustness_score", "equivariance_error"],
    "data.ingest_dataset": ["_unit", "hashed_split", "_ensure_each_split", "_dedupe"],
    "explain.spray": ["pool_maps", "eigengap", "spray", "region_of", "structures", "_candidate", "describe", "pixel_mask",
                      "control_region", "box_of"],
    "explain.clever_hans": ["paste", "region_test", "property_test", "judge_tests"],
    "explain.global_cues": ["measure", "transform", "strength_for", "cohens_d", "suspects"],
    "data.copies": ["_box_mean", "_search", "distance", "_residual", "descriptor", "candidates"],
    "data.data_audit": ["near_duplicates", "leakage", "label_issues", "quality_outliers", "copy_search"],
    "represent.embedding_duplicates": ["nearest", "confirm"],
    "robust.conformal": ["min_calibration", "prediction_sets", "by_group", "coverage_report", "examples", "conformal"],
    "robust.selective": ["risks", "aurc", "optimal_aurc", "accuracy_at", "selective"],
    "robust.ood": ["normalised", "image_scores", "auroc", "fpr_at_95", "separation"],
    "explain.tcav": ["tcav_layer", "fit_cav", "tcav_score", "concept_test", "tcav", "prediction_shift"],
    "report.concept_sections": ["concepts_summary", "forbidden_concept"],
    "robust.error_slices": ["normalised", "cluster_embeddings", "excess_errors_p", "describe", "nearest_training",
                            "error_slices"],
}
# Modules whose slowest fast tests (attacks on trained networks, seconds each) would make a run take hours:
# their mutants are judged by these tests alone (attacks on linear models with closed-form answers).
TESTS = {"robust.adversarial": ["tests/unit/robust/test_attacks.py"], "explain.spray": ["tests/unit/explain/test_clever_hans.py"],
         "explain.clever_hans": ["tests/unit/explain/test_clever_hans.py"], "explain.global_cues": ["tests/unit/explain/test_clever_hans.py"],
         "data.copies": ["tests/unit/data/test_copies.py", "tests/unit/data/test_data_audit.py"], "data.data_audit": ["tests/unit/data/test_data_audit.py"],
         "represent.embedding_duplicates": ["tests/unit/represent/test_embedding_duplicates.py"],
         "robust.conformal": ["tests/unit/robust/test_conformal.py"],
         "robust.selective": ["tests/unit/robust/test_selective.py"],
         "robust.ood": ["tests/unit/robust/test_ood.py", "tests/unit/robust/test_shift.py"],
         "explain.tcav": ["tests/unit/explain/test_tcav.py"],
         "report.concept_sections": [f"tests/unit/explain/test_tcav.py::{t}" for t in (
             "test_the_verdict_reads_the_prediction_shift_of_the_classes_tcav_puts_above_random",
             "test_the_section_and_the_summary_carry_each_concepts_scores")],
         # the known answers on synthetic embeddings and the stage's wiring; the planted Fashion-MNIST slices train a
         # network (seconds a mutant: hours in all)
         "robust.error_slices": [f"tests/unit/robust/test_error_slices.py::{t}" for t in (
             "test_the_excess_is_measured_against_each_stratum_s_rate_outside",
             "test_a_planted_blob_is_found_and_the_confusion_alone_is_not",
             "test_the_training_images_nearest_a_cluster_are_those_along_its_direction",
             "test_a_cluster_is_described_by_its_numbers_classes_mistakes_groups_properties_and_images",
             "test_the_level_alpha_and_holms_correction_decide_a_borderline_cluster",
             "test_too_few_images_or_no_mistake_is_said_and_two_clusters_are_enough",
             "test_the_clusters_are_kmeans_on_the_centred_normalised_principal_components_with_the_seed",
             "test_a_p_value_never_exceeds_one_and_vectors_are_scaled_to_unit_length",
             "test_the_training_images_nearest_a_cluster_are_measured_from_the_test_splits_mean")]
         + ["tests/unit/robust/test_slices.py::test_the_error_clusters_of_the_embedding_find_the_dark_images_and_describe_them"],
         # the verdicts: the tests of the report and of the stages whose outputs they read (the others never call them)
         **{f"report.{m}": ["tests/unit/report", "tests/unit/robust", "tests/unit/explain", "tests/unit/represent",
                            "tests/unit/test_sections.py"]
            for m in ("behaviour_checks", "shortcut_checks", "attribution_checks", "checks")},
         "core.calibration_error": ["tests/unit/robust/test_calibrate.py", "tests/unit/robust/test_slices.py", "tests/unit/robust/test_shift.py",
                                    "tests/unit/report/test_compare.py"]}
# Modules whose tests, forked from a process that has run them, deadlocked (thread pools: file hashing, torch's
# intra-op threads in attacks and temperature fits, scipy, scikit-learn's k-means): their mutants run from a fork server instead.
FORKSERVER = {"data.ingest_dataset", "robust.adversarial", "robust.calibrate", "robust.invariance", "explain.tcav",
              "report.concept_sections", "data.data_audit", "robust.error_slices"}
KILLED = {1: "killed", 3: "killed", 37: "killed"}
STATUS = {36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 0: "survived",
          5: "no tests", 33: "no tests", 34: "skipped", None: "not checked", -11: "segfault",
          -9: "segfault", 2: "interrupted"}
MUTMUT = Path(sys.executable).parent / "mutmut"


def ensure_mutmut():
    if not MUTMUT.exists():
        print("mutation: installing the pinned mutmut (requirements-dev.txt)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(REPO / "requirements-dev.txt")], check=True)


def stage(module: str):
    """A copy of the repository where the package is src/cvaudit and only `module` is mutated."""
    global STAGE
    STAGE = STAGE_ROOT / module  # one per module: two modules can run side by side
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    skip = {".git", ".venv", "build", "results", "logs", "benchmarks", ".snakemake", "mutants", ".pytest_cache",
            "pyproject.toml"}
    (STAGE / "src").mkdir()
    shutil.copytree(REPO / "scripts" / "cvaudit", STAGE / "src" / "cvaudit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    also = []
    for p in sorted(REPO.iterdir()):
        if p.name in skip:
            continue
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, STAGE / p.name, **(
            {"ignore": shutil.ignore_patterns("__pycache__")} if p.is_dir() else {}))
        if p.name != "tests":
            also.append(p.name)
    args = ["-m", "not e2e", "-p", "no:cacheprovider", "-x", "-q"]
    (STAGE / "pyproject.toml").write_text(f"""[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["e2e: runs the workflow end to end through snakemake (slow)", "slow: a unit test over about 2 s (run here too)"]

[tool.mutmut]
source_paths = ["src"]
only_mutate = ["src/cvaudit/{module.replace(".", "/")}.py"]
pytest_add_cli_args = {json.dumps(args)}
pytest_add_cli_args_test_selection = {json.dumps(TESTS.get(module, ["tests/"]))}
also_copy = {json.dumps(also)}
use_git_change_detection = false
process_isolation = "{'forkserver' if module in FORKSERVER else 'fork'}"

""" + tool_settings())


def tool_settings() -> str:
    """The repository's linter and formatter settings (pyproject.toml from [tool.ruff] on): the tests that run ruff
    and snakefmt read them in the staged copy too."""
    text = (REPO / "pyproject.toml").read_text()
    return text[text.index("[tool.ruff]"):]


def in_scope(module: str, key: str) -> bool:
    func = key.rpartition(".")[2].partition("__mutmut_")[0]
    func = func.split("ǁ")[1] + "." + func.split("ǁ")[2] if "ǁ" in func else func.removeprefix("x_")
    return any(fnmatch.fnmatch(func, pat) or fnmatch.fnmatch(func.split(".")[0], pat) for pat in SCOPE[module])


def diff(key: str) -> str:
    p = subprocess.run([str(MUTMUT), "show", key], cwd=STAGE, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines()[1:] if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join(lines)


def equivalents() -> dict:
    """tools/mutation_equivalent.txt: `mutant-name | the changed line after mutation | why it is equivalent`."""
    out = {}
    if EQUIVALENT.exists():
        for ln in EQUIVALENT.read_text().splitlines():
            if ln.strip() and not ln.startswith("#"):
                name, after, why = (s.strip() for s in ln.split("|", 2))
                out[name] = (after, why)
    return out


def run(module: str, children: int) -> dict:
    stage(module)
    # the mutants' pytest sessions keep their numbered temporary folders apart from those of a `make test` running
    # beside them (pytest keeps the newest three under one root, and each new session deletes the oldest)
    (STAGE / "tmp").mkdir()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DEBUG_TEMPROOT": str(STAGE / "tmp")}
    print(f"mutation: {module}: mutmut run (fast tests only) in {STAGE.relative_to(REPO)}", flush=True)
    names = [f"cvaudit.{module}.{'' if pat == '*' else 'x_'}{pat}{'' if pat == '*' else '__mutmut_*'}"
             for pat in SCOPE[module]]  # only the functions in scope are mutated and run
    p = subprocess.run([str(MUTMUT), "run", "--max-children", str(children), *names], cwd=STAGE, env=env,
                       capture_output=True, text=True)
    meta = STAGE / "mutants" / "src" / "cvaudit" / f"{module.replace('.', '/')}.py.meta"
    if not meta.exists():
        sys.exit(f"mutation: mutmut produced no results for {module}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    equiv = equivalents()
    rows, stale = [], []
    for key, code in sorted(codes.items(), key=lambda kv: (kv[0].partition("__mutmut_")[0],
                                                           int(kv[0].rpartition("_")[2]))):
        status = KILLED.get(code) or STATUS.get(code, "suspicious")
        rows.append({"key": key, "status": status, "in_scope": in_scope(module, key)})
    scoped = [r for r in rows if r["in_scope"]]
    for r in scoped:
        if r["status"] != "killed":
            r["diff"] = diff(r["key"])
            if r["key"] in equiv:
                after, why = equiv[r["key"]]
                if not any(after in ln for ln in r["diff"].splitlines() if ln.startswith("+")):
                    stale.append(r["key"])
                else:
                    r["status"], r["why"] = "equivalent", why
    killed = sum(r["status"] == "killed" for r in scoped)
    timeouts = sum(r["status"] == "timeout" for r in scoped)
    counted = sum(r["status"] != "equivalent" for r in scoped)
    score = {"module": module, "mutants": len(rows), "in_scope": len(scoped), "killed": killed,
             "timeouts": timeouts, "equivalent": len(scoped) - counted,
             "score": round(killed / counted, 4) if counted else None,
             "stale_equivalents": stale}
    write_report(module, score, scoped)
    return score


def write_report(module: str, score: dict, scoped: list):
    lines = [f"# Mutation score: cvaudit/{module.replace('.', '/')}.py", "",
             f"{score['killed']} of {score['in_scope'] - score['equivalent']} non-equivalent mutants killed "
             f"({100 * (score['score'] or 0):.1f}%) in the functions a verdict reads; {score['timeouts']} timed out "
             "(counted as not killed); "
             f"{score['equivalent']} equivalent (tools/mutation_equivalent.txt says why).", "",
             f"Functions in scope: {', '.join(SCOPE[module])}; the module's other "
             f"{score['mutants'] - score['in_scope']} mutants (stage drivers, file input and output) are not run.", ""]
    for status in ("survived", "timeout", "no tests", "suspicious", "skipped", "not checked", "segfault", "equivalent"):
        these = [r for r in scoped if r["status"] == status]
        if these:
            lines += [f"## {status} ({len(these)})", ""]
            for r in these:
                lines += [f"### {r['key']}" + (f": {r['why']}" if r.get("why") else ""), "", "```diff",
                          r.get("diff", ""), "```", ""]
    if score["stale_equivalents"]:
        lines += ["## listed as equivalent, but the diff changed: judge again", ""] + \
                 [f"- {k}" for k in score["stale_equivalents"]]
    (BUILD / f"{module}.md").write_text("\n".join(lines) + "\n")


def table(scores: dict) -> str:
    rows = ["| module | mutants in scope | equivalent | killed | timed out | score |", "|---|---:|---:|---:|---:|---:|"]
    for m in SCOPE:
        if m in scores:
            s = scores[m]
            rows.append(f"| `{m}.py` | {s['in_scope']} | {s['equivalent']} | {s['killed']} | {s.get('timeouts', 0)} | "
                        f"{100 * (s['score'] or 0):.1f}% |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules under scripts/cvaudit, of: {', '.join(SCOPE)}")
    ap.add_argument("--all", action="store_true", help="every module in the scope")
    ap.add_argument("--children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--table", action="store_true", help="print the table of CONTRIBUTING.md from build/mutation/scores.json")
    a = ap.parse_args()
    if a.table:
        print(table(json.loads((BUILD / "scores.json").read_text())))
        return
    modules = list(SCOPE) if a.all else a.modules
    unknown = [m for m in modules if m not in SCOPE]
    if not modules or unknown:
        ap.error(f"name modules from: {', '.join(SCOPE)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    ensure_mutmut()
    BUILD.mkdir(parents=True, exist_ok=True)
    scores_path = BUILD / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    for m in modules:
        s = run(m, a.children)
        scores[m] = s
        scores_path.write_text(json.dumps(scores, indent=1))
        print(f"mutation: {m}: {s['killed']}/{s['in_scope'] - s['equivalent']} killed "
              f"({100 * (s['score'] or 0):.1f}%), {s['equivalent']} equivalent -> {BUILD.relative_to(REPO)}/{m}.md"
              + (f"; STALE equivalents: {s['stale_equivalents']}" if s["stale_equivalents"] else ""), flush=True)


if __name__ == "__main__":
    main()
