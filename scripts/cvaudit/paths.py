"""Every file the workflow writes, by name: the one table the rules (their inputs and outputs), the report's
sections and the comparison read. A template's {wildcards} are Snakemake's; `path(name, **wildcards)` fills
them. Imports nothing (the Snakefile reads it)."""
from __future__ import annotations

PATHS = {
    # rules/data.smk: one set per dataset
    "source": "results/data/{dataset}/source.json",
    "manifest": "results/data/{dataset}/manifest.csv",
    "rejected": "results/data/{dataset}/rejected.csv",
    "dataset_info": "results/data/{dataset}/dataset.json",
    "images": "results/data/{dataset}/images",
    "baseline": "results/data/{dataset}/baseline.json",
    "properties": "results/data/{dataset}/properties.csv",
    "data_audit": "results/data/{dataset}/data_audit.npz",
    # rules/model.smk
    "weights": "results/{model}/model.safetensors",
    "train_metrics": "results/{model}/train/metrics.json",
    "history": "results/{model}/train/history.csv",
    "eval_metrics": "results/{model}/eval/metrics.json",
    "probs": "results/{model}/eval/probs.npz",
    "audit_set": "results/{model}/eval/audit_set.npz",
    "predictions": "results/{model}/eval/predictions.csv",
    # rules/explain.smk and the sharded explain stage
    "maps": "results/{model}/explain/{method}/maps.npz",
    "maps_part": "results/{model}/explain/{method}/shards/{shard}.npz",
    "agreement": "results/{model}/explain/agreement.json",
    "clever_hans": "results/{model}/explain/clever_hans.npz",
    # rules/represent.smk
    "embeddings": "results/{model}/represent/embeddings.npz",
    "embedding_duplicates": "results/{model}/represent/duplicates.npz",
    "units": "results/{model}/represent/units.npz",
    "ascent": "results/{model}/represent/ascent.npz",
    "layers": "results/{model}/represent/layers.npz",
    "representations": "results/compare/{dataset}/representations.json",
    # rules/robust.smk and the sharded invariance and adversarial stages
    "calibration": "results/{model}/robust/calibration.json",
    "shuffled_labels": "results/{model}/robust/shuffled_labels.json",
    "slices": "results/{model}/robust/slices.json",
    "shape_texture": "results/{model}/robust/shape_texture.npz",
    "corruptions": "results/{model}/robust/corruptions.npz",
    "shift": "results/{model}/robust/shift.json",
    "invariance": "results/{model}/robust/invariance/{family}.json",
    "invariance_part": "results/{model}/robust/shards/invariance/{family}/{shard}.npz",
    "adversarial": "results/{model}/robust/adversarial/{attack}.npz",
    "adversarial_part": "results/{model}/robust/shards/adversarial/{attack}/{shard}.npz",
    # rules/report.smk
    "report": "results/{model}/report/report.html",
    "summary": "results/{model}/report/summary.json",
    "report_pdf": "results/{model}/report/report.pdf",
    "evidence": "results/{model}/report/evidence",
    "side_by_side": "results/compare/{dataset}/side_by_side.npz",
    "comparison": "results/compare/report.html",
    "comparison_summary": "results/compare/summary.json",
    "comparison_pdf": "results/compare/report.pdf",
    "gate": "results/gate.json",
    "gate_passed": "results/.gate_passed",
}


def path(name: str, **wildcards) -> str:
    """The file `name` with its wildcards filled (those not given stay as Snakemake wildcards)."""
    return PATHS[name].format_map(_Keep(wildcards))


class _Keep(dict):
    def __missing__(self, key):
        return "{" + key + "}"
