"""The model report's sections, in their order: the one registry the workflow and the report share.

Each section has an id (its anchor, and its template `templates/sections/<id>.html.j2`), a title (the
table of contents) and, for a section drawn from an analysis stage, `files(config, model)`: the
stage outputs it reads, by name. rules/common.smk declares them as the report's inputs, named
"<section>__<name>", and the report groups them back (`by_section`): a failed stage is shown in the
section that reads it, and a switched-off stage's section is left out. Adding a section is its
template, one entry here, and what it shows in cvaudit/report/stage_sections.py. Imports nothing heavy (the
Snakefile reads it).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from cvaudit.core.registry import FLOOR_METHOD

SEP = "__"
AGREEMENT = "agreement"  # the attributions section's file beside the methods' maps


class Section(NamedTuple):
    id: str
    title: str
    files: Callable[[dict, str], dict[str, str]] | None = None  # (config, model) -> {name: path}


def _robust(config: dict) -> dict | None:
    return config["robustness"] if config["robustness"]["enabled"] else None


def configured_as_ensemble(config: dict, model: str) -> bool:
    """The config names this model an ensemble of others (arch: ensemble)."""
    return config["models"][model]["arch"] == "ensemble"


def trained_here(config: dict, model: str) -> bool:
    """Trained by cvaudit (an ensemble is only put together from its members; train: false is audited as is)."""
    return config["models"][model]["train"] is not False and not configured_as_ensemble(config, model)


def _models_on(config: dict, dataset: str) -> list[str]:
    return [m for m, c in config["models"].items() if c["dataset"] == dataset]


def _data_audit(config, model):
    if not config["data_audit"]["enabled"]:
        return {}
    files = {"audit": f"results/data/{config['models'][model]['dataset']}/data_audit.npz",
             "probs": f"results/{model}/eval/probs.npz"}  # label issues by the model's own test probabilities
    if embedding_duplicates_on(config):  # near duplicates in the model's own embedding space
        files["embedding"] = f"results/{model}/represent/duplicates.npz"
    return files


def embedding_duplicates_on(config: dict) -> bool:
    """The embedding_duplicates stage runs: the data audit and its embedding search are on, and the represent
    stage gives the test images' embeddings."""
    return bool(config["data_audit"]["enabled"] and config["data_audit"]["embedding"]["enabled"]
                and config["represent"]["enabled"])


def _clever_hans(config, model):
    return {"results": f"results/{model}/explain/clever_hans.npz"} if config["clever_hans"]["enabled"] else {}


def _calibration(config, model):
    rob = _robust(config)
    return {"calibration": f"results/{model}/robust/calibration.json"} \
        if rob and rob["calibration"]["enabled"] else {}


def _attributions(config, model):
    files = {m: f"results/{model}/explain/{m}/maps.npz" for m in [*config["explain"]["methods"], FLOOR_METHOD]}
    if len(config["explain"]["methods"]) > 1:  # the method_agreement stage: how alike the methods' maps are
        files[AGREEMENT] = f"results/{model}/explain/agreement.json"
    return files


def _representations(config, model):
    if not config["represent"]["enabled"]:
        return {}
    files = {"represent": f"results/{model}/represent/embeddings.npz"}
    dataset = config["models"][model]["dataset"]
    if len(_models_on(config, dataset)) > 1:  # CKA between the models trained on the same data
        files["compare"] = f"results/compare/{dataset}/representations.json"
    return files


def _units(config, model):
    rep = config["represent"]
    if not rep["enabled"] or configured_as_ensemble(config, model):  # no units of its own: its members' reports show theirs
        return {}
    files = {"units": f"results/{model}/represent/units.npz"}
    if rep["ascent"]["enabled"]:
        files["ascent"] = f"results/{model}/represent/ascent.npz"
    return files


def _slices(config, model):
    rob = _robust(config)
    return {"slices": f"results/{model}/robust/slices.json"} if rob and rob["slices"]["enabled"] else {}


def corruption_reference(config: dict, model: str) -> str:
    """The model a model's corruption errors are relative to (robustness.corruptions.reference, default the
    dataset's first model)."""
    dataset = config["models"][model]["dataset"]
    return config["robustness"]["corruptions"]["reference"].get(dataset) or _models_on(config, dataset)[0]


def corruption_reference_files(config: dict, model: str) -> list[str]:
    """The reference's corruptions.npz, an input of a model's corruptions job ([] for the reference itself)."""
    ref = corruption_reference(config, model)
    return [] if ref == model else [f"results/{ref}/robust/corruptions.npz"]


def _corruptions(config, model):
    rob = _robust(config)
    if not rob or not rob["corruptions"]["enabled"]:
        return {}
    return {"results": f"results/{model}/robust/corruptions.npz"}  # with the CE and mCE against the reference


def _shift(config, model):
    rob = _robust(config)
    return {"shift": f"results/{model}/robust/shift.json"} \
        if rob and rob["shift"]["enabled"] and config["models"][model].get("shift_sets") else {}


def _shape_texture(config, model):
    rob = _robust(config)
    return {"results": f"results/{model}/robust/shape_texture.npz"} if rob and rob["shape_texture"]["enabled"] else {}


def _layers(config, model):
    rep = config["represent"]
    return {"views": f"results/{model}/represent/layers.npz"} \
        if rep["enabled"] and rep["layer_views"]["enabled"] and not configured_as_ensemble(config, model) else {}


def _invariance(config, model):
    rob = _robust(config)
    return {f: f"results/{model}/robust/invariance/{f}.json" for f in rob["invariance"]} if rob else {}


def _adversarial(config, model):
    rob = _robust(config)
    if not rob or not rob["adversarial"]["enabled"]:
        return {}
    return {a: f"results/{model}/robust/adversarial/{a}.npz" for a in rob["adversarial"]["attacks"]}


def _shuffled_labels(config, model):
    rob = _robust(config)
    return {"curves": f"results/{model}/robust/shuffled_labels.json"} \
        if rob and rob["shuffled_labels"]["enabled"] and trained_here(config, model) else {}


SECTIONS = [
    Section("summary", "Summary and verdicts"),
    Section("diagnosis", "Diagnosis: a degenerate model"),
    Section("card", "Model card"),
    Section("data", "Data"),
    Section("data_audit", "Data audit: duplicates, leakage, label issues, outliers", _data_audit),
    Section("training", "Training"),
    Section("evaluation", "Evaluation and baselines"),
    Section("clever_hans", "Clever Hans: does the model cheat?", _clever_hans),
    Section("calibration", "Calibration", _calibration),
    Section("slices", "Where the model fails: slices and groups", _slices),
    Section("attributions", "Attributions and their trust checks", _attributions),
    Section("representations", "Representations", _representations),
    Section("units", "Inside the network", _units),
    Section("layers", "What the layers keep", _layers),
    Section("invariance", "Invariance", _invariance),
    Section("shift", "Shifted test sets", _shift),
    Section("corruptions", "Common corruptions", _corruptions),
    Section("adversarial", "Adversarial examples", _adversarial),
    Section("shape_texture", "Shape or texture?", _shape_texture),
    Section("shuffled_labels", "Shuffled-label test (memorisation)", _shuffled_labels),
    Section("appendix", "Appendix: provenance and configuration"),
]
BY_ID = {s.id: s for s in SECTIONS}


def report_inputs(config: dict, model: str) -> dict[str, str]:
    """Every analysis output a model's report reads, named "<section>__<name>"."""
    return {f"{s.id}{SEP}{name}": path for s in SECTIONS if s.files for name, path in s.files(config, model).items()}


def by_section(inputs: dict) -> dict[str, dict[str, str]]:
    """The report's analysis inputs grouped back: {section id: {name: path}} (other inputs are left out)."""
    out: dict[str, dict[str, str]] = {}
    for key, path in inputs.items():
        sid, sep, name = key.partition(SEP)
        if sep and sid in BY_ID:
            out.setdefault(sid, {})[name] = path
    return out
