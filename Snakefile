# cvaudit: labelled images + a list of models -> one audit report per model.
# Wiring only: logic lives in scripts/cvaudit (an importable package that never imports snakemake).
import os
import re
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.27")

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))
from cvaudit import CvauditError
from cvaudit.config import canonical_order, check_paths, resolve_paths, validate_config
from cvaudit.config_file import check_config_file

# The demo config is the default. Only when no --configfile/--config is given: Snakemake would
# otherwise deep-merge it into the user's config (demo models and datasets would leak in). An empty
# --configfile is an error, not the demo.
# `--configfile my.yaml results/m/report/summary.json` reads the target as one more config file. When it
# exists and parses (a .json output), Snakemake merges it into the config: say what happened instead.
for _f in workflow.overwrite_configfiles:
    if Path(_f).suffix.lower() not in (".yaml", ".yml", ".json") or Path(_f).resolve().is_relative_to(
        Path("results").resolve()
    ):
        raise ValueError(
            f"cvaudit: {_f} was given after --configfile, so Snakemake reads it as a config file; "
            "put targets before --configfile: snakemake --cores all TARGET --configfile my.yaml"
        )
if not config and workflow.overwrite_configfiles:
    raise ValueError(
        f"cvaudit: the config file {', '.join(map(str, workflow.overwrite_configfiles))} is empty; "
        "it needs at least datasets: and models: (see config/config.yaml and config/schema.yaml)"
    )
if not config:

    configfile: "config/config.yaml"


# Relative paths in a config file are relative to that file (the last --configfile given).
CONFIG_DIR = (
    Path(workflow.overwrite_configfiles[-1]).absolute().parent if workflow.overwrite_configfiles else Path.cwd()
)

PRESET_CHOSEN = isinstance(config.get("audit"), dict) and "preset" in config["audit"]  # else told at the start
try:
    for _f in workflow.overwrite_configfiles:  # read strictly: duplicate keys, templating
        check_config_file(_f)
    validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")
    resolve_paths(config, CONFIG_DIR)
    check_paths(config)  # before the DAG: existing results never stand in for a dataset that is gone
    canonical_order(config)  # keys in another order, or a default written out, rerun nothing
except CvauditError as e:
    raise ValueError(f"cvaudit: {e}") from None


# `snakemake --report report.zip`: a browsable archive of the run (outputs registered with report(...)).
report: "report/workflow.rst"


# The run-time estimate (cvaudit.estimate): printed before a run or a plan; each job's time limit and memory (runtime,
# mem_mb) come from its cost model.
# CVAUDIT_ESTIMATE=0 skips it: nothing printed, each rule's fixed resources.
ESTIMATE = os.environ.get("CVAUDIT_ESTIMATE", "1") != "0"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/sharded.smk"
include: "rules/explain.smk"
include: "rules/represent.smk"
include: "rules/robust.smk"
include: "rules/report.smk"


# A plan says what the audit costs (before the DAG there is no job list: all of it, from scratch);
# a run says what its jobs will cost before the first starts (onstart).
DRY_RUN = any(a in ("--dry-run", "--dryrun") or re.fullmatch(r"-[a-zA-Z]*n[a-zA-Z]*", a) for a in sys.argv)
if ESTIMATE and workflow.is_main_process and DRY_RUN:
    from cvaudit.estimate import announce

    if said := announce(config, workflow.cores):
        print(said, file=sys.stderr)


onstart:
    # Before any job: a folder a job would write in but cannot (read-only, immutable, another owner's) stops the
    # run here with its name, instead of a traceback from the first job that tries.
    from cvaudit.config import budget_notice
    from cvaudit.core.files import unwritable_folders

    if not PRESET_CHOSEN and (notice := budget_notice(config)):
        print(notice, file=sys.stderr)
    if bad := unwritable_folders():
        raise ValueError(
            "cvaudit: cannot write in "
            + "; ".join(f"{f} ({why})" for f, why in bad)
            + ". Make the folder writable (chmod u+w, or chattr -i where it was made immutable), or run "
            "from a folder you own (snakemake --directory DIR); nothing was run or changed"
        )
    if ESTIMATE:
        from cvaudit.estimate import announce

        todo = [(j.rule.name, dict(j.wildcards.items())) for j in workflow.dag.needrun_jobs()]
        if said := announce(config, workflow.cores, todo):
            print(said, file=sys.stderr)


onsuccess:
    from cvaudit.core.job import where_reports

    if where := where_reports(list(config["models"])):
        print(where, file=sys.stderr)


onerror:
    from cvaudit.core.job import interrupted, where_reports

    if where := where_reports(list(config["models"])):
        print(where, file=sys.stderr)
    if stopped := interrupted(log):
        print(stopped, file=sys.stderr)


rule all:
    default_target: True
    input:
        all_reports(),
