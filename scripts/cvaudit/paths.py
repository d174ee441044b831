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
    "onnx_export": "results/{model}/export/model.onnx",
    # rules/explain.smk and the sharded explain stage
    "maps": "results/{model}/explain/{method}/maps.npz",
    "maps_part": "results/{model}/explain/{method}/shards/{shard}.npz",
    "agreement": "results/{model}/explain/agreement.json",
    "clever_hans": "results/{model}/explain/clever_hans.npz",
    "tcav": "results/{model}/explain/tcav.json",
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


# What each file holds (docs/reference/outputs.md is generated from these two tables)
ABOUT = {
    "source": "the source's content fingerprint: a changed, added or removed file reruns ingestion",
    "manifest": "every image kept: path, label, split, sha256, size, mode, the original file, what was converted",
    "rejected": "every file left out, and why (unreadable, duplicate, conflicting labels)",
    "dataset_info": "counts per class and split, conversions, the source fingerprint",
    "images": "array sources (IDX, lfw) written as PNGs; converted copies of files that needed it",
    "baseline": "the classic-ML baseline (logistic regression on small grey images)",
    "properties": "brightness, contrast, sharpness, ... of every test image",
    "data_audit": "near duplicates and copies, leaks across splits, label issues, quality outliers",
    "weights": "the trained (or audited) model, with its class names and preprocessing",
    "train_metrics": "the training run: device, epochs, best phase, validation accuracy",
    "history": "loss and accuracy per epoch",
    "eval_metrics": "accuracy, top-5, per-class precision/recall/F1, the confusion matrix, the baseline gain",
    "probs": "the test set's probabilities and targets, and the model's own label issues",
    "audit_set": "the fixed images every explanation stage explains",
    "predictions": "every test image's prediction and confidence",
    "onnx_export": "the model as an ONNX file, written only when asked for (a target, or another model's arch onnx:FILE)",
    "maps": "one method's maps, deletion/insertion curves, sanity, sensitivity and ROAD scores",
    "maps_part": "one shard of a method's maps (merged into maps.npz)",
    "agreement": "rank correlation between the methods' maps",
    "clever_hans": "SpRAy clusters, suspects, counterfactual pastes with their controls, global cues, evidence images",
    "tcav": "each concept's CAV accuracy and TCAV score per class against random counterparts, with Kim et al.'s test",
    "embeddings": "embeddings, PCA, t-SNE, neighbours, layer CKA",
    "embedding_duplicates": "copies across splits found through the model's embedding",
    "units": "sparsity, dead channels, top-k images with boxes, filters, grids",
    "ascent": "gradient-ascent images per channel and per class",
    "layers": "feature inversions and effective receptive fields",
    "representations": "CKA and prediction agreement between the models of a dataset",
    "calibration": "reliability bins, ECE/MCE/NLL/Brier before and after temperature scaling",
    "shuffled_labels": "training curves on shuffled labels (memorisation)",
    "slices": "accuracy per property bin, the weak slices, groups",
    "shape_texture": "cue-conflict decisions, shape bias, shuffles, examples",
    "corruptions": "right/wrong and confidence per corruption x severity x image, CE and mCE",
    "shift": "accuracy, ECE and gap on each shifted test set",
    "invariance": "accuracy, consistency, score and Grad-CAM drift per severity of one transform family",
    "invariance_part": "one shard of a family's invariance (merged)",
    "adversarial": "accuracy against epsilon, flip epsilons, gradient-masking checks, examples of one attack",
    "adversarial_part": "one shard of an attack (merged)",
    "report": "the model's audit report (self-contained HTML)",
    "summary": "every verdict with its value, interval and n, the metrics, the findings (summary_version)",
    "report_pdf": "the report as a PDF (report.pdf: true)",
    "evidence": "every list behind a verdict or gallery, whole, as CSV files",
    "side_by_side": "the same test images explained by each model of a dataset",
    "comparison": "all models side by side (HTML)",
    "comparison_summary": "the comparison's numbers and ranks",
    "comparison_pdf": "the comparison as a PDF",
    "gate": "the audit.fail_on gate's verdict per model (kept when the gate fails the run)",
    "gate_passed": "written when the gate passes",
}


def path(name: str, **wildcards) -> str:
    """The file `name` with its wildcards filled (those not given stay as Snakemake wildcards)."""
    return PATHS[name].format_map(_Keep(wildcards))


class _Keep(dict):
    def __missing__(self, key):
        return "{" + key + "}"
