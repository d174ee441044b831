# The stages whose work is per image: explain (per attribution method), invariance (per transform
# family) and adversarial (per attack). Each is a pair of rules built below from one entry of SHARDED:
# `<stage>_shard` computes images [shard * shard_size, (shard + 1) * shard_size) and `<stage>` merges
# its shards, or with shard_size 0 computes the whole stage in one job (cvaudit.core.shards). Both rules
# take their inputs and options from the same entry, so a shard and its merge cannot disagree, and
# each job receives only the options it reads. priority: the stages that hold the long jobs (integrated
# gradients, LIME, SHAP, the attacks) start first, so that the short ones fill the cores at the end.
# With split_jobs false, `<stage>_model` computes every item of the stage for one model in one job instead
# (cvaudit.sections.one_job): each model's files are made by one rule or the other.
from types import SimpleNamespace

from cvaudit.core.registry import attack_options
from cvaudit.sections import one_job, stage_items


def _explain_job(wildcards):
    return {"options": config["explain"].get(wildcards.method, {}), "trust": config["explain"]["trust"]}


def _invariance_job(wildcards):
    rob = config["robustness"]
    return {"options": {"max_images": rob["max_images"], "severities": rob["invariance"][wildcards.family]}}


def _invariance_merge(wildcards):  # the Grad-CAM drift is computed by the merge alone
    return {**_invariance_job(wildcards), "drift": config["robustness"]["drift"]}


def _adversarial_job(wildcards):
    return {"options": attack_options(config["robustness"]["adversarial"], wildcards.attack)}


SHARDED = {
    "explain": {
        "item": "method",
        "data": PATHS["audit_set"],
        "out": PATHS["maps"],
        "part": PATHS["maps_part"],
        "images": config["audit"]["max_images"],
        "job": _explain_job,
        "merge_job": _explain_job,
        "mem_mb": 6000,
        "runtime": 120,
        "priority": 5,
    },
    "invariance": {
        "item": "family",
        "data": manifest_of,
        "out": PATHS["invariance"],
        "part": PATHS["invariance_part"],
        "images": config["robustness"]["max_images"],
        "job": _invariance_job,
        "merge_job": _invariance_merge,
        "mem_mb": 4000,
        "runtime": 60,
        "priority": 0,
    },
    "adversarial": {
        "item": "attack",
        "data": manifest_of,
        "out": PATHS["adversarial"],
        "part": PATHS["adversarial_part"],
        "images": config["robustness"]["adversarial"]["max_images"],
        "job": _adversarial_job,
        "merge_job": _adversarial_job,
        "mem_mb": 6000,
        "runtime": 120,
        "priority": 5,
    },
}


def _parts_of(stage):
    """The merge's input function: the part files of its shards (none when shard_size is 0)."""
    entry = SHARDED[stage]

    def parts(wildcards):
        named = {"model": wildcards.model, entry["item"]: getattr(wildcards, entry["item"]), "shard": "{shard}"}
        return shard_files(entry["part"].format(**named), entry["images"])

    return parts


for _stage, _entry in SHARDED.items():
    _names = f"{{model}}.{{{_entry['item']}}}"
    _split = one_of(m for m in config["models"] if not one_job(config, _stage, m))

    rule:
        name:
            f"{_stage}_shard"
        input:
            model=PATHS["weights"],
            data=_entry["data"],
        output:
            out=_entry["part"],
        log:
            f"logs/{_stage}_shard/{_names}.{{shard}}.log",
        benchmark:
            f"benchmarks/{_stage}_shard/{_names}.{{shard}}.tsv"
        wildcard_constraints:
            model=_split,
        priority: _entry["priority"]
        conda:
            "../envs/cvaudit.yaml"
        threads: 1
        resources:
            gpu=GPU,
            mem_mb=memory(f"{_stage}_shard", _entry["mem_mb"]),
            runtime=limit(f"{_stage}_shard", _entry["runtime"]),
        params:
            stage=_stage,
            item=_entry["item"],
            job=_entry["job"],
            seed=config["seed"],
            device=config["device"],
            shard_size=config["shard_size"],
        script:
            "../scripts/sharded.py"

    rule:
        name:
            _stage
        input:
            model=PATHS["weights"],
            data=_entry["data"],
            parts=_parts_of(_stage),
        output:
            out=_entry["out"],
        log:
            f"logs/{_stage}/{_names}.log",
        benchmark:
            f"benchmarks/{_stage}/{_names}.tsv"
        wildcard_constraints:
            model=_split,
        priority: _entry["priority"]
        conda:
            "../envs/cvaudit.yaml"
        threads: 1  # many small jobs: two run side by side on two cores instead of one on both
        resources:
            gpu=GPU,
            mem_mb=memory(_stage, _entry["mem_mb"]),
            runtime=limit(_stage, _entry["runtime"]),
        params:
            stage=_stage,
            item=_entry["item"],
            job=_entry["merge_job"],
            seed=config["seed"],
            device=config["device"],
        script:
            "../scripts/sharded.py"


def _model_jobs(stage):
    """The one-job rule's params: each item's job options, as its one-item rule would receive them (unsharded)."""
    entry = SHARDED[stage]

    def jobs(wildcards):
        return {
            i: entry["merge_job"](SimpleNamespace(model=wildcards.model, **{entry["item"]: i}))
            for i in stage_items(config, stage, wildcards.model)
        }

    return jobs


for _stage, _entry in SHARDED.items():
    _models = [m for m in config["models"] if one_job(config, _stage, m)]
    if not _models:
        continue
    # the configured items: the same for every model one_job lets through (an export's attacks stay split)
    _items = stage_items(config, _stage, _models[0])

    rule:
        name:
            f"{_stage}_model"
        input:
            model=PATHS["weights"],
            data=_entry["data"],
        output:
            expand(_entry["out"], **{_entry["item"]: _items}, allow_missing=True),
        log:
            f"logs/{_stage}_model/{{model}}.log",
        benchmark:
            f"benchmarks/{_stage}_model/{{model}}.tsv"
        wildcard_constraints:
            model=one_of(_models),
        priority: _entry["priority"]
        conda:
            "../envs/cvaudit.yaml"
        threads: 1
        resources:
            gpu=GPU,
            mem_mb=memory(f"{_stage}_model", _entry["mem_mb"]),
            runtime=limit(f"{_stage}_model", _entry["runtime"] * len(_items)),
        params:
            stage=_stage,
            item=_entry["item"],
            each=_items,
            jobs=_model_jobs(_stage),
            seed=config["seed"],
            device=config["device"],
        script:
            "../scripts/sharded.py"
