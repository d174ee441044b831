# Input functions and wildcard constraints shared by the rules.
import re
from pathlib import Path

from cvaudit.data import source_files


# Every configured attribution method, plus a random map: the floor of the faithfulness checks.
EXPLAIN_METHODS = list(config["explain"]["methods"]) + ["random"]


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in config["datasets"]),
    model="|".join(re.escape(m) for m in config["models"]),
    method="|".join(re.escape(m) for m in EXPLAIN_METHODS),
    family="translate|rotate|scale|brightness|contrast|noise|blur|jpeg",
    attack="fgsm|pgd",


# Workflow files (templates) resolved against the Snakefile, so --directory elsewhere works.
TEMPLATES = Path(workflow.basedir) / "templates"


def dataset_of(model):
    return config["models"][model]["dataset"]


def manifest_of(wildcards):
    return f"results/data/{dataset_of(wildcards.model)}/manifest.csv"


def dataset_sources(wildcards):
    """The image files themselves: adding, removing or changing one reruns ingestion."""
    try:
        return source_files(config["datasets"][wildcards.dataset])
    except CvauditError as e:
        raise ValueError(f"cvaudit: dataset '{wildcards.dataset}': {e}") from None


def explain_maps(wildcards):
    return {m: f"results/{wildcards.model}/explain/{m}/maps.npz" for m in EXPLAIN_METHODS}


def models_of(dataset):
    return [m for m, c in config["models"].items() if c["dataset"] == dataset]


def represent_files(wildcards):
    """The representation views the report shows (none when switched off)."""
    rep = config["represent"]
    if not rep["enabled"]:
        return {}
    m = wildcards.model
    files = {"represent": f"results/{m}/represent/embeddings.npz", "units": f"results/{m}/represent/units.npz"}
    if rep["ascent"]["enabled"]:
        files["ascent"] = f"results/{m}/represent/ascent.npz"
    if len(models_of(dataset_of(m))) > 1:  # CKA between the models trained on the same data
        files["compare"] = f"results/compare/{dataset_of(m)}/representations.json"
    return files


def robust_files(wildcards):
    """Calibration, one curve per invariance family, one result per attack (none when switched off)."""
    rob, m = config["robustness"], wildcards.model
    if not rob["enabled"]:
        return {}
    files = {f"invariance_{f}": f"results/{m}/robust/invariance/{f}.json" for f in rob["invariance"]}
    if rob["calibration"]["enabled"]:
        files["calibration"] = f"results/{m}/robust/calibration.json"
    if rob["adversarial"]["enabled"]:
        files.update({f"adversarial_{a}": f"results/{m}/robust/adversarial/{a}.npz" for a in rob["adversarial"]["attacks"]})
    if rob["randomisation"]["enabled"] and config["models"][m]["train"] is not False:
        files["randomisation"] = f"results/{m}/robust/randomisation.json"
    return files


def report_files(model):
    files = [f"results/{model}/report/report.html", f"results/{model}/report/summary.json"]
    if config["report"]["pdf"]:
        files.append(f"results/{model}/report/report.pdf")
    return files


def all_reports():
    return [f for m in config["models"] for f in report_files(m)]
