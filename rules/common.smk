# Input functions and wildcard constraints shared by the rules.
import re
from pathlib import Path

from cvaudit.config import shards
from cvaudit.core.job import name_keys
from cvaudit.core.registry import ATTACKS, FAMILIES, METHODS, is_export_arch
from cvaudit.data.fingerprint import write_fingerprint
from cvaudit.paths import PATHS, path
from cvaudit.resources import job_mem_mb, job_minutes
from cvaudit.sections import (
    STAGE_ON,
    cka_models,
    corruption_reference_files,
    concept_inputs,
    error_clusters_on,
    one_job,
    report_inputs,
    report_settings,
    stage_items,
    stage_on,
)


def limit(rule_name, fixed):
    """A rule's runtime resource in minutes (SLURM's --time): three times the run-time estimate of the job's work,
    at least 10 (cvaudit.resources.job_minutes), doubled on each retry; `fixed` where the estimate is off
    (CVAUDIT_ESTIMATE=0)."""
    if not ESTIMATE:
        return fixed
    return lambda wildcards, attempt: job_minutes(config, rule_name, dict(wildcards.items()), attempt)


def memory(rule_name, fixed):
    """A rule's mem_mb resource (SLURM's --mem): a job's base plus the layer outputs it holds, from the model's
    counted activations (cvaudit.resources.job_mem_mb), doubled on each retry; `fixed` where the estimate is off."""
    if not ESTIMATE:
        return fixed
    return lambda wildcards, attempt: job_mem_mb(config, rule_name, dict(wildcards.items()), attempt)


# Every configured attribution method, plus a random map: the floor of the faithfulness checks.
EXPLAIN_METHODS = stage_items(config, "explain", None)


def one_of(names):
    """A wildcard constraint matching exactly these names (none: a pattern that matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# Methods, families and attacks come from cvaudit.core.registry (the one list; the schema's enums agree).
wildcard_constraints:
    dataset=one_of(config["datasets"]),
    model=one_of(config["models"]),
    method=one_of(METHODS),
    family=one_of(FAMILIES),
    attack=one_of(ATTACKS),
    shard=r"\d+",


# Rules that run a model ask for one GPU when the config's device is CUDA (the SLURM profile turns
# resource gpu into --gpus); with device auto or cpu they ask for none.
GPU = 1 if str(config["device"]).startswith("cuda") else 0

# Workflow files (templates) resolved against the Snakefile, so --directory elsewhere works.
TEMPLATES = Path(workflow.basedir) / "templates"


def shard_files(pattern, n_images):
    """The part files a sharded stage merges (none when config key shard_size is 0)."""
    return [pattern.format(shard=i) for i in range(shards(n_images, config["shard_size"]))]


def dataset_of(model):
    return config["models"][model]["dataset"]


def manifest_of(wildcards):
    return path("manifest", dataset=dataset_of(wildcards.model))


def dataset_fingerprint(wildcards):
    """The source's content fingerprint (cvaudit.data.fingerprint), rewritten only when the content changes:
    a changed, new or removed file reruns ingestion, a touch or a copy does not. No image path reaches
    Snakemake."""
    out = path("source", dataset=wildcards.dataset)
    try:
        return write_fingerprint(config["datasets"][wildcards.dataset], wildcards.dataset, out)
    except CvauditError as e:
        raise ValueError(f"cvaudit: dataset '{wildcards.dataset}': {name_keys(str(e), wildcards.dataset)}") from None


def models_of(dataset):
    return [m for m, c in config["models"].items() if c["dataset"] == dataset]


def bench(rule, *names):
    """The Snakemake benchmark file of a job: benchmarks/<rule>/<wildcard values joined by dots>.tsv."""
    return f"benchmarks/{rule}/{'.'.join(str(n) for n in names)}.tsv"


def sharded_benchmarks(stage, model, n_images):
    """A sharded stage's benchmark files (rules/sharded.smk): its merge per item, then the shards; or the one job
    of all its items."""
    if one_job(config, stage, model):
        return {stage: bench(f"{stage}_model", model)}
    items = stage_items(config, stage, model)
    files = {f"{stage} {i}": bench(stage, model, i) for i in items}
    files.update(
        {
            f"{stage} {i} shard {k}": bench(f"{stage}_shard", model, i, k)
            for i in items
            for k in range(shards(n_images, config["shard_size"]))
        }
    )
    return files


def benchmark_files(model):
    """{stage: Snakemake benchmark file} of every job behind a model's report, for its run-time table (the jobs
    that run: cvaudit.sections.stage_on)."""
    d, rob = dataset_of(model), config["robustness"]
    made_by = "plant_cue" if config["datasets"][d]["source"] == "planted_cue" else "ingest_dataset"
    files = {made_by: bench(made_by, d)}
    for stage in ("fit_baseline", "data_audit", "image_properties", "compare_representations"):  # one job per dataset
        if stage_on(config, model, stage):
            files[stage] = bench(stage, d)
    for stage in STAGE_ON:
        if (
            stage not in files
            and stage not in (made_by, "ingest_dataset")
            and stage not in SHARDED
            and stage_on(config, model, stage)
        ):
            files[stage] = bench(stage, model)
    files.update(sharded_benchmarks("explain", model, config["audit"]["max_images"]))
    if stage_on(config, model, "invariance"):
        files.update(sharded_benchmarks("invariance", model, rob["max_images"]))
    if stage_on(config, model, "adversarial"):
        files.update(sharded_benchmarks("adversarial", model, rob["adversarial"]["max_images"]))
    return files


def report_files(model):
    files = [path("report", model=model), path("summary", model=model)]
    if config["report"]["pdf"]:
        files.append(path("report_pdf", model=model))
    return files


def compare_files():
    if not config["report"]["compare"]["enabled"]:
        return []
    files = [PATHS["comparison"], PATHS["comparison_summary"]]
    if config["report"]["pdf"]:
        files.append(PATHS["comparison_pdf"])
    return files


def shared_datasets():
    """Datasets with two or more models: their models explain the same images side by side."""
    return [d for d in config["datasets"] if len(models_of(d)) > 1]


def user_model_files(wildcards):
    """The files of a model you bring (models.*.weights as a path, arch python:FILE:FACTORY, classes_file)."""
    cfg, files = config["models"][wildcards.model], {}
    for m in cfg.get("members") or []:  # an ensemble is its members' saved models
        files[f"member_{m}"] = path("weights", model=m)
    if cfg["weights"] != "none" and not cfg["weights"].startswith(("packaged:", "torchvision:")):
        files["weights"] = cfg["weights"]
    if cfg["arch"].startswith("python:"):
        files["arch_file"] = cfg["arch"].split(":")[1]
    if is_export_arch(cfg["arch"]):  # the ONNX or TorchScript file
        files["export"] = cfg["arch"].split(":", 1)[1]
    if cfg["arch"].startswith("hf:"):  # the folder save_pretrained wrote
        folder = Path(cfg["arch"][len("hf:") :])
        for f in ("config.json", "model.safetensors", "preprocessor_config.json"):
            if (folder / f).exists():
                files[f"hf_{f.split('.')[0]}"] = str(folder / f)
    if cfg.get("classes_file"):
        files["classes_file"] = cfg["classes_file"]
    return files


def compare_inputs(wildcards):
    files = {f"summary_{m}": path("summary", model=m) for m in config["models"]}
    files.update({f"probs_{m}": path("probs", model=m) for m in config["models"]})  # McNemar between models
    for d in {dataset_of(m) for m in config["models"]}:
        files[f"baseline_{d}"] = path("baseline", dataset=d)
    for d in shared_datasets():
        files[f"side_{d}"] = path("side_by_side", dataset=d)  # the same images explained by each model
        if config["represent"]["enabled"] and len(cka_models(config, d)) > 1:
            files[f"cka_{d}"] = path("representations", dataset=d)
    return files


def all_reports():
    return (
        [f for m in config["models"] for f in report_files(m)] + compare_files() + [PATHS["gate"], PATHS["gate_passed"]]
    )
