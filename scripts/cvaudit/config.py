"""Config validation against config/schema.yaml, filling defaults, with messages that name the key.

jsonschema does the validation; the default-filling validator is jsonschema's documented recipe.
We do not use snakemake.utils.validate because cvaudit never imports snakemake and its messages
do not name the offending key's full path.
"""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from cvaudit import CvauditError
from cvaudit.core.registry import FLOOR_METHOD, METHODS, is_export_arch
from cvaudit.paths import path as output_path

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def _with_defaults(cls):
    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


# Keys that were renamed or removed: a clear error naming the replacement beats "unexpected key".
RENAMED = {
    ("verdicts", "fgsm_accuracy"): "verdicts.robust_accuracy (judged on the strongest attack, not FGSM alone)",
    ("robustness", "adversarial", "steps"): "robustness.adversarial.pgd.steps (and autoattack.steps for APGD)",
    ("robustness", "randomisation"): "robustness.shuffled_labels (Zhang et al.'s shuffled-label memorisation "
                                     "test; the attributions' parameter-randomisation check is "
                                     "explain.trust.sanity_images)",
    ("robustness", "adversarial", "step_factor"): "nothing: PGD's step is 2.5 * eps / steps (Madry et al.); "
                                                  "remove the key",
}


def _renamed(config: dict) -> None:
    for path, instead in RENAMED.items():
        node = config
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            raise CvauditError(f"config key '{'.'.join(path)}' is no longer used; use {instead}")


def _numbers_from_text(validator, config: dict) -> None:
    """Numbers YAML 1.1 reads as text (`lr: 1e-3`: no dot before the exponent) become numbers where the
    schema wants a number; they are numbers in YAML 1.2 and JSON. Anything else stays as the user wrote it."""
    def every(errors):
        for e in errors:
            yield e
            yield from every(e.context or [])  # inside anyOf (models.*.train)

    for e in list(every(validator.iter_errors(config))):
        wants = e.schema.get("type") if e.validator == "type" else None
        wants = set(wants) if isinstance(wants, list) else {wants}
        if isinstance(e.instance, str) and wants & {"number", "integer"} and e.absolute_path:
            try:
                value = float(e.instance.strip())
            except ValueError:
                continue
            if "number" not in wants and not value.is_integer():
                continue
            node = config
            for k in list(e.absolute_path)[:-1]:
                node = node[k]
            node[e.absolute_path[-1]] = int(value) if "number" not in wants else value


def _check_ensemble(config: dict, name: str, model: dict) -> None:
    """arch: ensemble needs members, other non-ensemble models of the same dataset that see the same images."""
    members = model.get("members")
    if model["arch"] != "ensemble":
        if members:
            raise CvauditError(f"config key 'models.{name}.members' is for arch: ensemble; remove it or set the arch")
        return
    if not members:
        raise CvauditError(f"config key 'models.{name}.members': an ensemble needs at least two other models of "
                           f"dataset '{model['dataset']}', e.g. members: [cnn_a, cnn_b]")
    for m in members:
        other = config["models"].get(m)
        why = ("the ensemble itself" if m == name else "not a key of models" if other is None
               else "an ensemble (members must be single models)" if other["arch"] == "ensemble"
               else f"a model of dataset '{other['dataset']}'" if other["dataset"] != model["dataset"]
               else f"of input_size {other['input_size']}, not {model['input_size']}" if other["input_size"] != model["input_size"]
               else f"resized by {other['resize']}, not {model['resize']}" if other["resize"] != model["resize"] else "")
        if why:
            raise CvauditError(f"config key 'models.{name}.members': '{m}' is {why}; an ensemble's members are other "
                               f"models of dataset '{model['dataset']}' with its input_size and resize "
                               f"(set models.{name}.input_size to theirs)")
    if model["weights"] != "none":
        raise CvauditError(f"config key 'models.{name}.weights': an ensemble has no weights of its own; remove it")


def _non_finite(node, path=()) -> None:
    """Refuse .nan and .inf anywhere (YAML reads them as numbers, and every range check passes a NaN)."""
    import math
    if isinstance(node, dict):
        for k, v in node.items():
            _non_finite(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _non_finite(v, (*path, str(i)))
    elif isinstance(node, float) and not math.isfinite(node):
        raise CvauditError(f"config key '{'.'.join(path)}': {node} is not a number to use; give a finite value")


PRESETS = Path(__file__).resolve().parents[2] / "config" / "presets.yaml"
# The project's own YAML (the 840-line schema, read by every snakemake invocation): libyaml, 0.03 s against 0.18 s
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def apply_preset(config: dict, presets_path: str | Path = PRESETS) -> None:
    """Fill in, in place, what the config leaves out from its preset (audit.preset; config/presets.yaml).
    A setting the config writes out wins, at any depth; a preset's mapping merges into the config's."""
    audit = config.get("audit")
    name = audit.get("preset", "standard") if isinstance(audit, dict) else "standard"
    presets = yaml.load(Path(presets_path).read_text(), Loader=_FAST_LOADER)
    if name not in presets:
        return  # the schema names the allowed presets

    def under(mine: dict, preset: dict) -> None:
        for k, v in preset.items():
            if k not in mine:
                mine[k] = copy.deepcopy(v)
            elif isinstance(v, dict) and isinstance(mine[k], dict):
                under(mine[k], v)
    under(config, presets[name])


def validate_config(config: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Validate `config` in place (filling the preset's settings and the defaults) and return it; raise
    CvauditError naming the key."""
    _renamed(config)
    _non_finite(config)
    beside = Path(schema_path).with_name("presets.yaml")
    apply_preset(config, beside if beside.exists() else PRESETS)
    schema = yaml.load(Path(schema_path).read_text(), Loader=_FAST_LOADER)
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    _numbers_from_text(cls(schema), config)
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = []
        for e in errors[:10]:
            best = jsonschema.exceptions.best_match([e])
            msg = best.message
            if best.validator == "anyOf" and e.absolute_path and e.absolute_path[-1] == "train":
                msg = "must be false (audit as is) or a mapping of training settings: " + "; ".join(
                    c.message for c in (best.context or [])[-3:])
            lines.append(f"  config key '{_key(best.absolute_path)}': {msg}")
        raise CvauditError("invalid config (see config/schema.yaml for every key):\n" + "\n".join(lines))
    for name, model in config["models"].items():
        if model["dataset"] not in config["datasets"]:
            raise CvauditError(
                f"config key 'models.{name}.dataset': unknown dataset '{model['dataset']}'; "
                f"defined datasets: {', '.join(sorted(config['datasets']))}")
        for d in model.get("shift_sets", []):
            if d not in config["datasets"] or d == model["dataset"]:
                why = "the model's own dataset" if d == model["dataset"] else "not a key of datasets"
                raise CvauditError(f"config key 'models.{name}.shift_sets': '{d}' is {why}; list other datasets of the "
                                   f"same classes (defined: {', '.join(sorted(config['datasets']))})")
        _check_ensemble(config, name, model)
        if model["weights"].startswith("packaged:") and model["weights"] != "packaged:efficientnet_lite0":
            raise CvauditError(f"config key 'models.{name}.weights': unknown packaged weights "
                               f"'{model['weights']}'; available: packaged:efficientnet_lite0")
    for name, ds in config["datasets"].items():
        if ds["source"] in ("imagefolder", "csv", "idx") and "path" not in ds:
            raise CvauditError(f"config key 'datasets.{name}.path' is required for source '{ds['source']}'")
        if ds["source"] == "planted_cue":
            _check_planted(config, name, ds)
        elif "from" in ds or "cue" in ds or ds.get("near_duplicates"):
            raise CvauditError(f"config key 'datasets.{name}': from, cue and near_duplicates belong to source "
                               f"planted_cue, not '{ds['source']}'; remove them")
        split = ds.get("split", {})
        if split.get("val", 0) + split.get("test", 0) > 1.0 + 1e-9:
            raise CvauditError(f"config key 'datasets.{name}.split': val + test must be at most 1")
    unknown = [m for m in config["clever_hans"]["methods"] if m not in METHODS or m == FLOOR_METHOD]
    if unknown:
        raise CvauditError(f"config key 'clever_hans.methods': unknown method(s) {', '.join(unknown)}; available: "
                           f"{', '.join(sorted(m for m in METHODS if m != FLOOR_METHOD))}")
    rob = config["robustness"]
    rotate = rob["invariance"].get("rotate")
    if rotate is not None and not any(abs(abs(a) - rob["check_angle"]) < 1e-9 for a in rotate):
        raise CvauditError(f"config key 'robustness.check_angle': {rob['check_angle']} is not among "
                           f"robustness.invariance.rotate {rotate}; add it there or change the angle")
    adv = rob["adversarial"]
    for key in ("check_epsilon", "example_epsilon"):
        if not any(abs(e - adv[key]) < 1e-9 for e in adv["epsilons"]):
            raise CvauditError(f"config key 'robustness.adversarial.{key}': {adv[key]} is not among "
                               f"robustness.adversarial.epsilons {adv['epsilons']}; add it there or change it")
    for d, ref in rob["corruptions"]["reference"].items():
        if d not in config["datasets"]:
            raise CvauditError(f"config key 'robustness.corruptions.reference.{d}': unknown dataset '{d}'; "
                               f"defined datasets: {', '.join(sorted(config['datasets']))}")
        if config["models"].get(ref, {}).get("dataset") != d:
            ours = [m for m, c in config["models"].items() if c["dataset"] == d]
            raise CvauditError(f"config key 'robustness.corruptions.reference.{d}': '{ref}' is not a model of dataset "
                               f"'{d}'; its models: {', '.join(ours) or 'none'}")
    sanity = config["explain"]["trust"]["sanity_images"]
    if 0 < config["shard_size"] < sanity:
        raise CvauditError(f"config key 'shard_size': {config['shard_size']} is smaller than "
                           f"explain.trust.sanity_images ({sanity}), which the first shard explains for the "
                           "parameter-randomisation check; raise shard_size or lower sanity_images")
    if config["shard_size"] and not config["split_jobs"]:
        raise CvauditError(f"config key 'split_jobs' is false, which runs each stage in one job, but shard_size "
                           f"{config['shard_size']} splits each method into jobs; set split_jobs: true, or shard_size: 0")
    return config


def _check_planted(config: dict, name: str, ds: dict) -> None:
    defined = ", ".join(sorted(config["datasets"]))
    parent = config["datasets"].get(ds.get("from"))
    if "from" not in ds:
        raise CvauditError(f"config key 'datasets.{name}.from' is required for source planted_cue: the dataset "
                           f"to copy (defined: {defined})")
    if parent is None or parent["source"] == "planted_cue":
        why = "is planted itself" if parent is not None else "is not a key of datasets"
        raise CvauditError(f"config key 'datasets.{name}.from': '{ds['from']}' {why}; name a dataset to copy "
                           f"(defined: {defined})")
    if "cue" not in ds:
        raise CvauditError(f"config key 'datasets.{name}.cue' is required for source planted_cue: at least "
                           "{class: NAME}, the class the cue goes with")


def _local(value) -> bool:
    return isinstance(value, str) and value not in ("", "none") and not value.startswith(("packaged:", "torchvision:"))


MIN_CONCEPT_IMAGES = 6  # fewer and the held-out accuracy of a concept's CAV rests on one or two images


def resolve_paths(config: dict, base: str | Path) -> None:
    """Make the config's relative paths relative to `base` (the config file's folder), written relative
    to the working directory when they lie under it (so results stay movable), else absolute."""
    import os

    def fix(p: str) -> str:
        if os.path.isabs(p):
            return p
        full = os.path.normpath(os.path.join(os.path.abspath(base), p))
        rel = os.path.relpath(full)
        return rel if not rel.startswith("..") else full

    for ds in config["datasets"].values():
        if "path" in ds:
            ds["path"] = fix(ds["path"])
    for c in (config.get("concepts") or {}).values():
        c["path"] = fix(c["path"])
    for m in config["models"].values():
        for key in ("weights", "classes_file"):
            if _local(m.get(key)):
                m[key] = fix(m[key])
        if m.get("arch", "").startswith("python:"):
            file, factory = m["arch"][len("python:"):].rsplit(":", 1)
            m["arch"] = f"python:{fix(file)}:{factory}"
        if m.get("arch", "").startswith("hf:") or is_export_arch(m.get("arch", "")):
            kind, file = m["arch"].split(":", 1)
            m["arch"] = f"{kind}:{fix(file)}"


def check_paths(config: dict, base: str | Path = ".") -> None:
    """Every path the config names exists, checked before Snakemake plans anything: a mistyped or moved
    dataset must stop the run even when results of the old data exist (they would be reported as the new)."""
    base = Path(base)
    for name, ds in config["datasets"].items():
        if "path" not in ds:
            continue
        p = base / ds["path"]
        want_dir = ds["source"] in ("imagefolder", "idx")
        if not (p.is_dir() if want_dir else p.is_file()):
            what = "folder" if want_dir else "file"
            raise CvauditError(f"config key 'datasets.{name}.path': {ds['path']} is not an existing {what}"
                               f"{' (it is a file)' if want_dir and p.is_file() else ''}{' (it is a folder)' if not want_dir and p.is_dir() else ''}; "
                               "fix the path (results of earlier runs are never reported as this dataset)")
    concepts = config.get("concepts") or {}
    if concepts:
        from cvaudit.core.images import image_files  # Pillow: only where concept folders are to be counted
    for name, c in concepts.items():
        p = base / c["path"]
        if not p.is_dir():
            raise CvauditError(f"config key 'concepts.{name}.path': {c['path']} is not an existing folder; give the "
                               "folder of the concept's example images")
        if len(image_files(p)) < MIN_CONCEPT_IMAGES:
            raise CvauditError(f"config key 'concepts.{name}.path': {c['path']} holds {len(image_files(p))} image(s); "
                               f"TCAV needs at least {MIN_CONCEPT_IMAGES} examples of a concept (50 or more give steadier "
                               "scores)")
    for name, m in config["models"].items():
        for key in ("weights", "classes_file"):
            value = m.get(key)
            if not _local(value):
                continue
            if not (base / value).is_file():
                raise CvauditError(f"config key 'models.{name}.{key}': file {value} not found; fix the path")
        arch = m.get("arch", "")
        if arch.startswith("python:"):
            file = arch[len("python:"):].rsplit(":", 1)[0]
            if not (base / file).is_file():
                raise CvauditError(f"config key 'models.{name}.arch': file {file} not found; fix the path")
        made_here = {output_path("onnx_export", model=other) for other in config["models"]}  # the rule export_onnx writes it
        if is_export_arch(arch) and not (base / arch.split(":", 1)[1]).is_file() and arch.split(":", 1)[1] not in made_here:
            raise CvauditError(f"config key 'models.{name}.arch': file {arch.split(':', 1)[1]} not found; give the "
                               "exported model's file (.onnx, or TorchScript's .pt)")
        if arch.startswith("hf:") and not (base / arch[len("hf:"):]).is_dir():
            raise CvauditError(f"config key 'models.{name}.arch': folder {arch[len('hf:'):]} not found; give the folder "
                               "a transformers model was saved to (save_pretrained)")


def shards(n_images: int, shard_size: int) -> int:
    """Jobs a stage over at most n_images images is split into (0: not sharded)."""
    return 0 if shard_size <= 0 else max(1, -(-n_images // shard_size))


ORDERED = ("models", "datasets")  # their order is the reports' order: kept as written


def canonical_order(config: dict) -> None:
    """Every setting's keys in sorted order, in place, after validation (which appends the defaults a config
    leaves out). Snakemake's params trigger compares the repr of a rule's params, so otherwise a config whose
    keys are merely in another order, or that writes out a default, would rerun every job that reads them.
    The order of the models and of the datasets is kept (the reports list them so); lists are never reordered."""
    def canon(x):
        if isinstance(x, dict):
            return {k: canon(x[k]) for k in sorted(x, key=str)}
        return [canon(v) for v in x] if isinstance(x, list) else x
    for key in list(config):
        v = config[key]
        config[key] = {n: canon(c) for n, c in v.items()} if key in ORDERED and isinstance(v, dict) else canon(v)


def budget_notice(config: dict, gpu: bool | None = None) -> str | None:
    """A line for the start of a run whose budgets do not fit its machine: the standard and thorough
    presets are sized for a GPU; on a CPU a model of 128 px or more takes hours with them. None when they fit.
    (The Snakefile says it only where the config does not choose a preset itself.)
    gpu: whether a GPU will run the jobs (None: device auto finds one by its driver, without importing torch)."""
    import shutil
    if gpu is None:
        gpu = config.get("device") == "cuda" or (config.get("device", "auto") == "auto" and (
            Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None))
    preset = (config.get("audit") or {}).get("preset", "standard")
    sizes = [m.get("input_size", 224) for m in config.get("models", {}).values() if m.get("arch") != "ensemble"]
    if gpu or preset == "quick" or not sizes or max(sizes) < 128:
        return None
    return (f"cvaudit: no GPU, and audit.preset is {preset}, whose budgets are sized for a GPU: at {max(sizes)} px "
            f"each model's audit can take hours on this CPU. For a first report in minutes set audit.preset: quick "
            "(config/presets.yaml says what each preset runs; settings you write out still win)")
