"""One sharding mechanism for the stages whose work is per image: explain (per method), invariance
(per family) and adversarial (per attack).

A sharded stage is a module that provides

    part(item, job, start=0, stop=None) -> (meta, arrays)   the images [start, stop) of its sample
    merge(item, job, parts, out) -> dict                     the stage's output from its parts, in order

where `item` is the method, family or attack and `job` the one dict of inputs and options that
rules/sharded.smk builds for both rules of the stage (model, data, options, seed, device, threads,
and what the stage adds), so a shard and its merge cannot disagree. Every per-image result depends
on that image alone, so merged shards equal one job (tests/workflow/test_shards.py).
"""
from __future__ import annotations

import importlib
import logging

from cvaudit.core.files import load_npz, save_npz

log = logging.getLogger("cvaudit.core.shards")

# The sharded stages and their modules, imported by name only by the job that runs one (as core.registry's
# tables): nothing here imports a stage.
STAGES = {"explain": "cvaudit.explain.explain", "invariance": "cvaudit.robust.invariance",
          "adversarial": "cvaudit.robust.adversarial"}


def stage_module(stage: str):
    if stage not in STAGES:
        raise ValueError(f"'{stage}' is not a sharded stage ({', '.join(STAGES)})")
    return importlib.import_module(STAGES[stage])


def shard_range(shard: int, shard_size: int) -> tuple[int, int]:
    """The images [start, stop) of shard number `shard`."""
    return shard * shard_size, (shard + 1) * shard_size


def run_shard(stage: str, item: str, job: dict, shard: int, shard_size: int, out) -> dict:
    """One shard of a stage, written to `out` (a part file its merge reads)."""
    start, stop = shard_range(shard, shard_size)
    meta, arrays = stage_module(stage).part(item, job, start, stop)
    save_npz(out, meta, **arrays)
    log.info("%s %s: shard %d in %.1fs", stage, item, shard, meta.get("seconds", 0.0))
    return meta


def read_part(path) -> tuple[dict, dict]:
    arrays = load_npz(path)
    return arrays.pop("meta"), arrays


def run_stage(stage: str, item: str, job: dict, out, parts: list | None = None) -> dict:
    """The stage's output: merged from its shards' part files, or, with none (config key shard_size
    0), computed here as one part."""
    module = stage_module(stage)
    loaded = [read_part(p) for p in parts] if parts else [module.part(item, job)]
    return module.merge(item, job, loaded, out)
