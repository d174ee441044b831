# Input functions and wildcard constraints shared by the rules.
import re
from pathlib import Path

from cvaudit.config import shards
from cvaudit.core.job import name_keys
from cvaudit.core.registry import ATTACKS, FAMILIES, FLOOR_METHOD, METHODS
from cvaudit.data.fingerprint import write_fingerprint
from cvaudit.resources import job_mem_mb, job_minutes
from cvaudit.sections import (configured_as_ensemble, corruption_reference_files, embedding_duplicates_on,
                              report_inputs, trained_here)


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
EXPLAIN_METHODS = list(config["explain"]["methods"]) + [FLOOR_METHOD]


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
    return f"results/data/{dataset_of(wildcards.model)}/manifest.csv"


def dataset_fingerprint(wildcards):
    """The source's content fingerprint (cvaudit.data.fingerprint), rewritten only when the content changes:
    a changed, new or removed file reruns ingestion, a touch or a copy does not. No image path reaches
    Snakemake."""
    out = f"results/data/{wildcards.dataset}/source.json"
    try:
        return write_fingerprint(config["datasets"][wildcards.dataset], wildcards.dataset, out)
    except CvauditError as e:
        raise ValueError(f"cvaudit: dataset '{wildcards.dataset}': {name_keys(str(e), wildcards.dataset)}") from None


def models_of(dataset):
    return [m for m, c in config["models"].items() if c["dataset"] == dataset]


def bench(rule, *names):
    """The Snakemake benchmark file of a job: benchmarks/<rule>/<wildcard values joined by dots>.tsv."""
    return f"benchmarks/{rule}/{'.'.join(str(n) for n in names)}.tsv"


def sharded_benchmarks(stage, model, items, n_images):
    """A sharded stage's benchmark files (rules/sharded.smk): its merge per item, then the shards."""
    files = {f"{stage} {i}": bench(stage, model, i) for i in items}
    files.update({f"{stage} {i} shard {k}": bench(f"{stage}_shard", model, i, k)
                  for i in items for k in range(shards(n_images, config["shard_size"]))})
    return files


def benchmark_files(model):
    """{stage: Snakemake benchmark file} of every job behind a model's report, for its run-time table."""
    d, rep, rob = dataset_of(model), config["represent"], config["robustness"]
    made_by = "plant_cue" if config["datasets"][d]["source"] == "planted_cue" else "ingest_dataset"
    files = {made_by: bench(made_by, d), "fit_baseline": bench("fit_baseline", d)}
    if config["data_audit"]["enabled"]:
        files["data_audit"] = bench("data_audit", d)
    if config["models"][model]["train"] is not False:
        files["train_model"] = bench("train_model", model)
    files["evaluate_model"] = bench("evaluate_model", model)
    files.update(sharded_benchmarks("explain", model, EXPLAIN_METHODS, config["audit"]["max_images"]))
    if config["clever_hans"]["enabled"]:
        files["clever_hans"] = bench("clever_hans", model)
    if rep["enabled"]:
        files["represent"] = bench("represent", model)
        if embedding_duplicates_on(config):
            files["embedding_duplicates"] = bench("embedding_duplicates", model)
        if not configured_as_ensemble(config, model):  # an ensemble has no units or layers of its own
            files["inspect_units"] = bench("inspect_units", model)
            if rep["ascent"]["enabled"]:
                files["visualise_ascent"] = bench("visualise_ascent", model)
            if rep["layer_views"]["enabled"]:
                files["layer_views"] = bench("layer_views", model)
        if len(models_of(d)) > 1:
            files["compare_representations"] = bench("compare_representations", d)
    if rob["enabled"]:
        if rob["calibration"]["enabled"]:
            files["calibrate"] = bench("calibrate", model)
        files.update(sharded_benchmarks("invariance", model, list(rob["invariance"]), rob["max_images"]))
        if rob["adversarial"]["enabled"]:
            adv = rob["adversarial"]
            files.update(sharded_benchmarks("adversarial", model, adv["attacks"], adv["max_images"]))
        if rob["shuffled_labels"]["enabled"] and trained_here(config, model):
            files["shuffled_labels"] = bench("shuffled_labels", model)
        if rob["shift"]["enabled"] and config["models"][model]["shift_sets"]:
            files["shift"] = bench("shift", model)
        if rob["corruptions"]["enabled"]:
            files["corruptions"] = bench("corruptions", model)
        if rob["shape_texture"]["enabled"]:
            files["shape_texture"] = bench("shape_texture", model)
        if rob["slices"]["enabled"]:
            files["image_properties"] = bench("image_properties", d)
            files["slices"] = bench("slices", model)
    return files


def report_files(model):
    files = [f"results/{model}/report/report.html", f"results/{model}/report/summary.json"]
    if config["report"]["pdf"]:
        files.append(f"results/{model}/report/report.pdf")
    return files


def compare_files():
    if not config["report"]["compare"]["enabled"]:
        return []
    files = ["results/compare/report.html", "results/compare/summary.json"]
    if config["report"]["pdf"]:
        files.append("results/compare/report.pdf")
    return files


def shared_datasets():
    """Datasets with two or more models: their models explain the same images side by side."""
    return [d for d in config["datasets"] if len(models_of(d)) > 1]


def user_model_files(wildcards):
    """The files of a model you bring (models.*.weights as a path, arch python:FILE:FACTORY, classes_file)."""
    cfg, files = config["models"][wildcards.model], {}
    for m in cfg.get("members") or []:  # an ensemble is its members' saved models
        files[f"member_{m}"] = f"results/{m}/model.safetensors"
    if cfg["weights"] != "none" and not cfg["weights"].startswith(("packaged:", "torchvision:")):
        files["weights"] = cfg["weights"]
    if cfg["arch"].startswith("python:"):
        files["arch_file"] = cfg["arch"].split(":")[1]
    if cfg.get("classes_file"):
        files["classes_file"] = cfg["classes_file"]
    return files


def compare_inputs(wildcards):
    files = {f"summary_{m}": f"results/{m}/report/summary.json" for m in config["models"]}
    files.update({f"probs_{m}": f"results/{m}/eval/probs.npz" for m in config["models"]})  # McNemar between models
    for d in {dataset_of(m) for m in config["models"]}:
        files[f"baseline_{d}"] = f"results/data/{d}/baseline.json"
    for d in shared_datasets():
        files[f"side_{d}"] = f"results/compare/{d}/side_by_side.npz"  # the same images explained by each model
        if config["represent"]["enabled"]:
            files[f"cka_{d}"] = f"results/compare/{d}/representations.json"
    return files


def all_reports():
    return [f for m in config["models"] for f in report_files(m)] + compare_files() + ["results/gate.json", "results/.gate_passed"]
