"""Which stages run for a model (STAGE_ON), and the model report's sections in their order: the one registry the
workflow, the run-time estimate and the report share.

Each section has an id (its anchor, and its template `templates/sections/<id>.html.j2`), a title (the
table of contents) and, for a section drawn from an analysis stage, `files(config, model)`: the
stage outputs it reads, by name, and how the report builds what it shows and its summary.json entry from
them (`build`, `summary`). rules/common.smk declares them as the report's inputs, named
"<section>__<name>", and the report groups them back (`by_section`): a failed stage is shown in the
section that reads it, and a switched-off stage's section is left out. Adding a section is its
template, one entry here and the builder it names (CONTRIBUTING.md). Imports nothing heavy (the Snakefile
reads it).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from cvaudit.core.registry import ATTACKS, BLACK_BOX_ATTACK, EXPORT_REASON, FLOOR_METHOD, is_export_arch
from cvaudit.paths import path

SEP = "__"
AGREEMENT = "agreement"  # the attributions section's file beside the methods' maps


class Section(NamedTuple):
    id: str
    title: str
    files: Callable[[dict, str], dict[str, str]] | None = None  # (config, model) -> {name: path}
    # "module:function" (imported by the report job alone): the section's files {name: path} -> what its template
    # shows as `section` (the section is left out while its stage is off; a failed stage's file is not passed)
    build: str | None = None
    # "module:function": what `build` returned (None when it did not run) -> the section's summary.json entry
    summary: str | None = None
    summary_key: str | None = None  # that entry's key (default: the section's id)


def configured_as_ensemble(config: dict, model: str) -> bool:
    """The config names this model an ensemble of others (arch: ensemble)."""
    return config["models"][model]["arch"] == "ensemble"


def trained_here(config: dict, model: str) -> bool:
    """Trained by cvaudit (an ensemble is only put together from its members; train: false is audited as is)."""
    return config["models"][model]["train"] is not False and not configured_as_ensemble(config, model)


def exported(config: dict, model: str) -> bool:
    """The model is an ONNX or TorchScript export, audited as a black box (cvaudit.net.export)."""
    return is_export_arch(config["models"][model]["arch"])


def _models_on(config: dict, dataset: str) -> list[str]:
    return [m for m, c in config["models"].items() if c["dataset"] == dataset]


def attacks_for(config: dict, model: str) -> list[str]:
    """The attacks run on a model: those configured; on an export the gradient-free ones among them, else Square."""
    attacks = config["robustness"]["adversarial"]["attacks"]
    if not exported(config, model):
        return list(attacks)
    return [a for a in attacks if ATTACKS[a].gradient_free] or [BLACK_BOX_ATTACK]


def stage_items(config: dict, stage: str, model: str) -> list[str]:
    """What a per-image stage (rules/sharded.smk) runs on a model, one job each: its attribution methods and the
    random map (the floor of the faithfulness checks), its invariance families, or its attacks."""
    if stage == "explain":
        return [*config["explain"]["methods"], FLOOR_METHOD]
    if stage == "invariance":
        return list(config["robustness"]["invariance"])
    return attacks_for(config, model)


def one_job(config: dict, stage: str, model: str) -> bool:
    """The per-image stage's items run in one job for this model (config key split_jobs false), not one job each;
    an export's attacks, which differ from the configured ones, stay one job each."""
    if config["split_jobs"]:
        return False
    return stage != "adversarial" or not exported(config, model)


def with_layers(config: dict, model: str) -> bool:
    """The model has layers and gradients of its own to look into: not an ensemble's average, not an export."""
    return not configured_as_ensemble(config, model) and not exported(config, model)


def embedding_duplicates_on(config: dict, model: str) -> bool:
    """The embedding_duplicates stage runs for a model: the data audit and its embedding search are on, and the
    represent stage gives the test images' embeddings."""
    return bool(config["data_audit"]["enabled"] and config["data_audit"]["embedding"]["enabled"]
                and _represent_on(config, model))


def error_clusters_on(config: dict, model: str) -> bool:
    """The slices stage clusters the model's errors in its embedding: asked for (robustness.slices.error_clusters)
    and the represent stage gives the embeddings."""
    return bool(config["robustness"]["slices"]["error_clusters"]) and _represent_on(config, model)


def concept_inputs(config: dict) -> list[str]:
    """Every example image of the configured concepts (the tcav stage reruns when one changes)."""
    from cvaudit.core.images import image_files
    return [f for c in config["concepts"].values() for f in image_files(c["path"])]


def _represent_on(c: dict, m: str) -> bool:  # an export has no embedding layer to read
    return bool(c["represent"]["enabled"]) and not exported(c, m)


def _robust_on(key: str):
    return lambda c, m: bool(c["robustness"]["enabled"] and c["robustness"][key]["enabled"])


def _units_on(c: dict, m: str) -> bool:  # an ensemble has no units or layers of its own: its members' reports show theirs
    return bool(c["represent"]["enabled"]) and with_layers(c, m)


def cka_models(config: dict, dataset: str) -> list[str]:
    """The models whose representations are compared by CKA on a dataset (those with an embedding)."""
    return [m for m in _models_on(config, dataset) if not exported(config, m)]


# Whether a stage's job runs for a model (a dataset's stages: for the models on it), by rule name: the one answer
# that the report's inputs (SECTIONS below), its run-time table (rules/common.smk) and the run-time estimate read.
STAGE_ON = {
    "ingest_dataset": lambda c, m: True,
    "fit_baseline": lambda c, m: True,
    "data_audit": lambda c, m: bool(c["data_audit"]["enabled"]),
    "image_properties": _robust_on("slices"),
    "train_model": lambda c, m: c["models"][m]["train"] is not False,  # an ensemble's job puts its members together
    "evaluate_model": lambda c, m: True,
    "explain": lambda c, m: True,
    "method_agreement": lambda c, m: len(c["explain"]["methods"]) > 1,  # how alike the methods' maps are
    "clever_hans": lambda c, m: bool(c["clever_hans"]["enabled"]),
    # a concept's direction lives in one network's layer: not an ensemble's average, not an export
    "tcav": lambda c, m: bool(c["concepts"]) and bool(c["explain"]["tcav"]["enabled"]) and with_layers(c, m),
    "represent": _represent_on,
    "embedding_duplicates": embedding_duplicates_on,
    "inspect_units": _units_on,
    "visualise_ascent": lambda c, m: _units_on(c, m) and bool(c["represent"]["ascent"]["enabled"]),
    "layer_views": lambda c, m: _units_on(c, m) and bool(c["represent"]["layer_views"]["enabled"]),
    # CKA between the models trained on the same data
    "compare_representations": lambda c, m: _represent_on(c, m) and len(cka_models(c, c["models"][m]["dataset"])) > 1,
    "calibrate": _robust_on("calibration"),
    "invariance": lambda c, m: bool(c["robustness"]["enabled"]),
    "adversarial": _robust_on("adversarial"),
    "shuffled_labels": lambda c, m: _robust_on("shuffled_labels")(c, m) and trained_here(c, m),
    "slices": _robust_on("slices"),
    "shift": lambda c, m: _robust_on("shift")(c, m) and bool(c["models"][m].get("shift_sets")),
    "corruptions": _robust_on("corruptions"),
    "shape_texture": _robust_on("shape_texture"),
}


def stage_on(config: dict, model: str, stage: str) -> bool:
    """STAGE_ON's answer for one stage and model (a name it does not know is a bug: KeyError)."""
    return STAGE_ON[stage](config, model)


def _on(stage: str, **files):
    """A section's files(config, model): {name: path name in cvaudit.paths} when the stage runs for the model."""
    return lambda config, model: {k: path(v, model=model) for k, v in files.items()} \
        if stage_on(config, model, stage) else {}


def _data_audit(config, model):
    if not stage_on(config, model, "data_audit"):
        return {}
    files = {"audit": path("data_audit", dataset=config["models"][model]["dataset"]),
             "probs": path("probs", model=model)}  # label issues by the model's own test probabilities
    if stage_on(config, model, "embedding_duplicates"):  # near duplicates in the model's own embedding space
        files["embedding"] = path("embedding_duplicates", model=model)
    return files


def _attributions(config, model):
    files = {m: path("maps", model=model, method=m) for m in [*config["explain"]["methods"], FLOOR_METHOD]}
    if stage_on(config, model, "method_agreement"):
        files[AGREEMENT] = path("agreement", model=model)
    return files


def _representations(config, model):
    if not stage_on(config, model, "represent"):
        return {}
    files = {"represent": path("embeddings", model=model)}
    if stage_on(config, model, "compare_representations"):
        files["compare"] = path("representations", dataset=config["models"][model]["dataset"])
    return files


def _units(config, model):
    if not stage_on(config, model, "inspect_units"):
        return {}
    files = {"units": path("units", model=model)}
    if stage_on(config, model, "visualise_ascent"):
        files["ascent"] = path("ascent", model=model)
    return files


def corruption_reference(config: dict, model: str) -> str:
    """The model a model's corruption errors are relative to (robustness.corruptions.reference, default the
    dataset's first model)."""
    dataset = config["models"][model]["dataset"]
    return config["robustness"]["corruptions"]["reference"].get(dataset) or _models_on(config, dataset)[0]


def corruption_reference_files(config: dict, model: str) -> list[str]:
    """The reference's corruptions.npz, an input of a model's corruptions job ([] for the reference itself)."""
    ref = corruption_reference(config, model)
    return [] if ref == model else [path("corruptions", model=ref)]


def _invariance(config, model):
    if not stage_on(config, model, "invariance"):
        return {}
    return {f: path("invariance", model=model, family=f) for f in config["robustness"]["invariance"]}


def _adversarial(config, model):
    if not stage_on(config, model, "adversarial"):
        return {}
    return {a: path("adversarial", model=model, attack=a) for a in attacks_for(config, model)}


SECTIONS = [
    Section("summary", "Summary and verdicts"),
    Section("diagnosis", "Diagnosis: a degenerate model"),
    Section("card", "Model card"),
    Section("data", "Data"),
    Section("data_audit", "Data audit: duplicates, leakage, label issues, outliers", _data_audit),
    Section("training", "Training"),
    Section("evaluation", "Evaluation and baselines"),
    Section("clever_hans", "Clever Hans: does the model cheat?", _on("clever_hans", results="clever_hans")),
    Section("concepts", "Concepts the model uses (TCAV)", _on("tcav", results="tcav"),
            build="cvaudit.report.concept_sections:concepts_section",
            summary="cvaudit.report.concept_sections:concepts_summary"),
    Section("calibration", "Calibration", _on("calibrate", calibration="calibration")),
    Section("slices", "Where the model fails: slices and groups", _on("slices", slices="slices")),
    Section("attributions", "Attributions and their trust checks", _attributions),
    Section("representations", "Representations", _representations),
    Section("units", "Inside the network", _units),
    Section("layers", "What the layers keep", _on("layer_views", views="layers"),
            build="cvaudit.report.behaviour_sections:layers_section",
            summary="cvaudit.report.behaviour_sections:layers_summary", summary_key="layer_views"),
    Section("invariance", "Invariance", _invariance),
    Section("shift", "Shifted test sets", _on("shift", shift="shift")),
    # the corruptions file holds the CE and mCE against the reference
    Section("corruptions", "Common corruptions", _on("corruptions", results="corruptions")),
    Section("adversarial", "Adversarial examples", _adversarial),
    Section("shape_texture", "Shape or texture?", _on("shape_texture", results="shape_texture")),
    Section("shuffled_labels", "Shuffled-label test (memorisation)", _on("shuffled_labels", curves="shuffled_labels")),
    Section("appendix", "Appendix: provenance and configuration"),
]
BY_ID = {s.id: s for s in SECTIONS}


def report_inputs(config: dict, model: str) -> dict[str, str]:
    """Every analysis output a model's report reads, named "<section>__<name>"."""
    return {f"{s.id}{SEP}{name}": file for s in SECTIONS if s.files for name, file in s.files(config, model).items()}


def not_applicable(model_cfg: dict, settings: dict) -> dict[str, str]:
    """{section id: why} for the switched-on sections a model cannot have (an export has no layers to read): the
    report shows each with its reason, never leaves it out in silence."""
    out = {}
    if settings.get("concepts") and settings["explain"]["tcav"]["enabled"]:  # TCAV reads one network's layer
        if is_export_arch(model_cfg["arch"]):
            out["concepts"] = EXPORT_REASON
        elif model_cfg["arch"] == "ensemble":
            out["concepts"] = ("an ensemble averages its members' outputs and has no layer of its own: its members' "
                               "reports score the concepts")
    if not is_export_arch(model_cfg["arch"]) or not settings["represent"]["enabled"]:
        return out
    out |= {"representations": EXPORT_REASON, "units": EXPORT_REASON}
    if settings["represent"]["layer_views"]["enabled"]:
        out["layers"] = EXPORT_REASON
    return out


def report_settings(config: dict) -> dict:
    """The settings a model's report reads (its rule's params): audit.fail_on is left out, read by the gate alone,
    so changing it reruns no report."""
    keys = ("seed", "device", "explain", "represent", "robustness", "baseline", "data_audit", "clever_hans",
            "concepts", "verdicts", "report")
    return {k: config[k] for k in keys} | {"audit": {k: v for k, v in config["audit"].items() if k != "fail_on"}}


def by_section(inputs: dict) -> dict[str, dict[str, str]]:
    """The report's analysis inputs grouped back: {section id: {name: path}} (other inputs are left out)."""
    out: dict[str, dict[str, str]] = {}
    for key, file in inputs.items():
        sid, sep, name = key.partition(SEP)
        if sep and sid in BY_ID:
            out.setdefault(sid, {})[name] = file
    return out
