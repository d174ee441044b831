"""Each job's resources from the run-time estimate (rules/common.smk): its time limit (Snakemake's runtime,
SLURM's --time) from the estimate of its work, and its memory request (mem_mb, SLURM's --mem) from the layer
outputs it holds. Neither ever stops a run: on an error, the floor or the base stands in."""
from __future__ import annotations

import math
from pathlib import Path

from cvaudit.estimate import RULE_STAGE, dataset_counts, device_of, estimate, pass_key, read_cache, row_is_run_by

LIMIT_SAFETY = 3.0  # a job's time limit: this many times its estimate (the estimate is within 2x per stage)
BASE_MB = 1000  # a job that imports torch and holds a model: about 0.7 to 1.0 GB measured (benchmarks' max_rss)
UNMEASURED_ACTIVATIONS = 500  # layer outputs per input pixel where none were counted (EfficientNet-Lite0: 499)
MEMORY_FACTOR = {"train": 1.0, "gradient": 2.0, "forward": 0.5}  # activations held, per image of a batch, over
#   one forward pass's: training keeps them for the backward pass (in-place layers free some: 0.75 measured at
#   224 px), a gradient job holds the graph and the gradients, a forward job about the largest layers
DATA_AUDIT_MB_PER_IMAGE = 0.8  # the data audit's hashes, thumbnails and neighbour tables (3.1 GB for 3,000 images)
MEMORY_SAFETY = 1.25
GRADIENT_STAGES = ("explain", "adversarial", "clever_hans", "tcav", "layer_views", "visualise_ascent")
FORWARD_STAGES = ("evaluate", "invariance", "corruptions", "shape_texture", "represent", "embedding_duplicates",
                  "inspect_units", "calibrate", "shift", "side_by_side", "compare_representations")


def activations_per_image(model_cfg: dict, n_classes: int, device: str, threads: int,
                          cache: str | Path | None) -> float:
    """Values every layer outputs for one image (counted when pass_seconds times the model; else a guess)."""
    size = int(model_cfg.get("input_size", 224))
    return read_cache(cache).get("activations " + pass_key(model_cfg, n_classes, device, threads),
                              UNMEASURED_ACTIVATIONS * size * size)


def job_mem_mb(config: dict, rule: str, wildcards: dict, attempt: int = 1,
               cache: str | Path = ".snakemake/cvaudit/pass_seconds.json") -> int:
    """A job's memory request in MB (Snakemake's mem_mb; SLURM's --mem): a job's base plus, for a job that runs
    the model, the layer outputs it holds (images per call x values per image x 4 bytes x MEMORY_FACTOR of its
    kind), times MEMORY_SAFETY, doubled on each retry. A request never stops a run: on an error, the base."""
    try:
        extra = _held_mb(config, rule, wildcards, cache)
    except Exception:
        extra = 0.0
    return int(math.ceil(MEMORY_SAFETY * (BASE_MB + extra) / 100) * 100) * max(1, int(attempt))


def _held_mb(config: dict, rule: str, wildcards: dict, cache: str | Path) -> float:
    """MB a job holds beyond its base: the data audit's tables, or the model's layer outputs per call."""
    from cvaudit.net.models import auto_batch
    stage = RULE_STAGE.get(rule, rule.removesuffix("_shard"))
    extra = 0.0
    model = config["models"].get(wildcards.get("model", ""))
    if stage == "data":
        extra = DATA_AUDIT_MB_PER_IMAGE * sum(dataset_counts(config, wildcards["dataset"]).values())
    elif model is not None:
        size = int(model.get("input_size", 224))
        classes = len(config["datasets"][model["dataset"]].get("class_names") or []) or 10
        members = [config["models"][m] for m in model.get("members", [])] if model.get("arch") == "ensemble" else [model]
        values = sum(activations_per_image(m, classes, device_of(config), int(config.get("threads", 1)), cache)
                     for m in members)
        kind = "train" if stage in ("train", "shuffled_labels") else "gradient" if stage in GRADIENT_STAGES else \
            "forward" if stage in FORWARD_STAGES else None
        if kind == "train":
            batch = (model.get("train") or {}).get("batch_size", 64) if stage == "train" else \
                config["robustness"]["shuffled_labels"]["batch_size"]
        else:
            batch = auto_batch(size, size, device_of(config))
        if kind:
            extra = batch * values * 4 / 1e6 * MEMORY_FACTOR[kind]
    return extra


_PLANNED: dict[tuple, tuple] = {}  # (config, its estimate's rows) by id and cache: computed once per process


def job_minutes(config: dict, rule: str, wildcards: dict, attempt: int = 1, floor: int = 10,
                cache: str | Path = ".snakemake/cvaudit/pass_seconds.json") -> int:
    """A job's time limit in minutes (Snakemake's runtime resource; SLURM's --time): LIMIT_SAFETY times the
    estimate of its work (a shard: the whole stage's, to be safe), at least `floor`, doubled on each retry.
    Pass costs come from the cache the run's estimate fills; no model is timed here."""
    key = (id(config), str(cache))
    if _PLANNED.get(key, (None,))[0] is not config:
        try:
            rows = estimate(config, device_of(config), 1, cache=cache, measure=False)["rows"]
        except Exception:  # a limit never stops a run: the floor stands in
            rows = []
        _PLANNED[key] = (config, rows)
    seconds = sum(r["seconds"] for r in _PLANNED[key][1] if row_is_run_by(r, [(rule, wildcards)]))
    return max(floor, math.ceil(LIMIT_SAFETY * seconds / 60)) * max(1, int(attempt))
