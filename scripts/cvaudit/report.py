"""One audit report per model: Jinja2 (autoescape on) -> self-contained HTML, PDF (WeasyPrint), summary.json."""
from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata as md
import logging
import platform
from pathlib import Path

import numpy as np

from . import __version__, figures
from .checks import overall, run_checks
from .data import read_manifest
from .diagnose import diagnosis
from .evaluate import load_audit_set
from .io import atomic_path, load_npz, read_json, stage_failure, write_json, write_text
from .train import read_history

log = logging.getLogger("cvaudit.report")
PACKAGES = ["torch", "torchvision", "timm", "captum", "scikit-learn", "numpy", "snakemake", "jinja2", "weasyprint"]
SUMMARY_VERSION = 2
# Inputs every report needs; any other input is an analysis stage that may have failed (runlog.run optional).
CORE_INPUTS = {"manifest", "train_metrics", "history", "eval_metrics", "audit_set", "template", "css"}
# The report's sections in their fixed order: (anchor, title in the table of contents).
SECTIONS = [("summary", "Summary and verdicts"), ("diagnosis", "Diagnosis: a degenerate model"), ("card", "Model card"), ("data", "Data"), ("training", "Training"),
            ("evaluation", "Evaluation and baselines"), ("calibration", "Calibration"),
            ("attributions", "Attributions and their trust checks"), ("representations", "Representations"),
            ("units", "Inside the network"), ("invariance", "Invariance"), ("adversarial", "Adversarial examples"),
            ("randomisation", "Randomisation test"), ("appendix", "Appendix: provenance and configuration")]


def section_of(key: str) -> str:
    """The report section an analysis input belongs to (by its input name in rules/report.smk)."""
    for prefix, section in (("invariance_", "invariance"), ("adversarial_", "adversarial")):
        if key.startswith(prefix):
            return section
    return {"represent": "representations", "compare": "representations", "units": "units", "ascent": "units",
            "calibration": "calibration", "randomisation": "randomisation"}.get(key, "attributions")


def failed_stages(inputs: dict) -> dict:
    """{input name: failure record} for the analysis stages that failed."""
    out = {}
    for key, path in inputs.items():
        if key not in CORE_INPUTS and (rec := stage_failure(path)):
            out[key] = {**rec, "section": section_of(key)}
    return out


def read_benchmarks(files: dict) -> list[dict]:
    """Run time, peak memory and CPU time per stage, from Snakemake's benchmark files (missing ones skipped)."""
    rows = []
    for stage, path in files.items():
        try:
            with open(path, newline="") as f:
                rec = next(csv.DictReader(f, delimiter="\t"))
        except (OSError, StopIteration):
            continue

        def num(k):
            try:
                return float(rec.get(k))
            except (TypeError, ValueError):
                return None
        rows.append({"stage": stage, "seconds": num("s"), "max_rss_mb": num("max_rss"), "cpu_seconds": num("cpu_time")})
    return rows


def package_versions() -> dict:
    out = {"python": platform.python_version(), "cvaudit": __version__}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "not installed"
    return out


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return f"{device} ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else device
    return f"cpu ({platform.processor() or platform.machine()})"


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _sample_grid(manifest, classes: list[str], per_class: int = 6, max_classes: int = 12) -> list[dict]:
    rows = read_manifest(manifest)
    out = []
    for c in classes[:max_classes]:
        paths = [r["path"] for r in rows if r["label"] == c][:per_class]
        out.append({"label": c, "images": [figures.png_uri(figures.thumbnail(p), 64) for p in paths]})
    return out


LOW_R2 = 0.5  # a LIME surrogate that explains less than half the variance on fresh samples is flagged


def _surrogate_fit(arrays: dict, meta: dict) -> dict | None:
    """LIME: its surrogate's R² on fresh samples and its own score; SHAP: regions (distinct values) per map."""
    if "lime_r2_fresh" in arrays:
        fresh = np.asarray(arrays["lime_r2_fresh"], float)
        ok = fresh[~np.isnan(fresh)]
        return {"kind": "lime", "fresh": float(np.median(ok)) if len(ok) else None,
                "own": float(np.nanmedian(arrays["lime_r2_own"])) if len(arrays["lime_r2_own"]) else None,
                "low": int((ok < LOW_R2).sum()), "n": int(len(ok)), "threshold": LOW_R2,
                "hide": meta["options"].get("hide_color", "mean")}
    if "shap_regions" in arrays:
        evals = meta["options"].get("evals")
        if evals == "auto":
            from .methods import SHAP
            evals = SHAP(evals="auto").evals(*np.asarray(arrays["maps_pred"]).shape[-2:])
        return {"kind": "shap", "regions": float(np.median(arrays["shap_regions"])), "evals": evals}
    return None


def _attribution_section(audit: dict, explain: dict, verdicts: list[dict]) -> dict:
    """Gallery (audit images x methods, shared colour scale), trust tables, curves, agreement."""
    from .checks import method_sentence
    from .trust import agreement

    names = audit["class_names"]
    usable = {m: r for m, r in explain.items() if r["meta"]["applicable"]}
    shown = [m for m in usable if m != "random"]
    labels = {m: r["meta"]["label"] for m, r in explain.items()}

    def tiles(i, key):
        img = audit["images"][i]
        return [figures.png_uri(figures.overlay(img, figures.display_scale(usable[m][key][i]), 1.0), max_size=128)
                for m in shown]

    def row(i, key):
        t, p = int(audit["targets"][i]), int(audit["preds"][i])
        return {"image": figures.png_uri(audit["images"][i], max_size=128), "true": str(names[t]), "pred": str(names[p]),
                "confidence": float(audit["confidence"][i]), "correct": t == p,
                "file": Path(str(audit["paths"][i])).name, "maps": tiles(i, key)}

    n = len(audit["images"])
    wrong = [i for i in range(n) if audit["targets"][i] != audit["preds"][i]]
    by = {(v["check"], v["method"]): v for v in verdicts if v["method"]}
    rows = []
    for m in shown:
        meta = usable[m]["meta"]
        f, s = by.get(("faithfulness_gain", m)), by.get(("sanity_similarity", m))
        rows.append({"method": m, "label": meta["label"], "kind": meta["kind"], "reads": meta["reads"],
                     "layer": meta.get("layer"), "deletion": meta["faithfulness"]["deletion_auc"],
                     "insertion": meta["faithfulness"]["insertion_auc"], "gain": f["value"] if f else None,
                     "gain_ci": (f["ci_low"], f["ci_high"]) if f and f["ci_low"] is not None else None,
                     "gain_n": f["n"] if f else None, "faith_settle": f["settle"] if f else "",
                     "sanity_settle": s["settle"] if s else "",
                     "completeness": meta.get("completeness"), "fit": _surrogate_fit(usable[m], meta),
                     "faith_status": f["status"] if f else "n/a", "sanity": meta.get("sanity"),
                     "sanity_status": s["status"] if s else "n/a", "seconds": meta.get("attribution_seconds"),
                     "sentence": method_sentence(meta["label"], f["status"] if f else "n/a",
                                                 s["status"] if s else "n/a", s["value"] if s else None)})
    rand = usable.get("random", {}).get("meta", {}).get("faithfulness")
    curves = {labels[m]: {"deletion": usable[m]["faith_deletion"], "insertion": usable[m]["faith_insertion"]}
              for m in usable}
    fractions = next(iter(usable.values()))["faith_fractions"] if usable else None
    agree = agreement({labels[m]: usable[m]["maps_pred"] for m in shown}) if len(shown) > 1 else None
    stages = rows[0]["sanity"]["stages"] if rows and rows[0]["sanity"] else []
    return {
        "methods": [labels[m] for m in shown],
        "gallery": [row(i, "maps_pred") for i in range(n)],
        "gallery_true": [row(i, "maps_true") for i in wrong],
        "not_applicable": [{"label": r["meta"]["label"], "reason": r["meta"]["reason"]}
                           for r in explain.values() if not r["meta"]["applicable"]],
        "rows": rows, "random": rand, "stages": [{"down_to": st["down_to"], "n": st["randomised_layers"],
                                                  "of": st["of"]} for st in stages],
        "curves": figures.faithfulness_curves(curves, fractions) if curves else None,
        "agreement": agree,
        "cam_gradcam": _cam_gradcam(agree, labels, explain),
        "agreement_fig": figures.agreement_heatmap(agree["methods"], agree["matrix"]) if agree else None,
        "colourbar": figures.colourbar(label="positive evidence for the class (each map scaled to its 99th percentile)"),
    }


def _represent_section(path, names: list[str], queries: int) -> dict:
    """Embedding space figures, k-NN / silhouette, neighbour retrieval (mistakes first), layer CKA."""
    from .represent import load_represent

    r = load_represent(path)
    meta = r["meta"]
    labels, preds, paths = r["labels"], r["preds"], [str(p) for p in r["paths"]]
    wrong = labels != preds
    order = list(np.flatnonzero(wrong)) + list(np.flatnonzero(~wrong))
    rows = []
    for i in order[:queries]:
        rows.append({"query": figures.png_uri(figures.thumbnail(paths[i]), 64), "label": names[labels[i]],
                     "pred": names[preds[i]], "wrong": bool(wrong[i]),
                     "neighbours": [{"image": figures.png_uri(figures.thumbnail(paths[j]), 64),
                                     "label": names[labels[j]], "same": bool(labels[j] == labels[i])}
                                    for j in r["neighbours"][i]]})
    ti = r["tsne_index"]
    cka = meta["cka"]
    return {"meta": meta,
            "pca": figures.embedding_scatter(r["pca"], labels, names, "PCA (first two components)", wrong),
            "tsne": figures.embedding_scatter(r["tsne"], labels[ti], names, "t-SNE", wrong[ti]),
            "thumbs": figures.thumbnail_scatter(r["tsne"], [paths[i] for i in ti]),
            "neighbours": rows,
            "cka": figures.agreement_heatmap(cka["layers"], cka["matrix"], label="linear CKA", vmin=0)
            if cka["layers"] else None}


def _model_view(path: str, size: int, resize: str = "stretch") -> np.ndarray:
    """The image as the model sees it (the same resize as every stage: models.display_transform), uint8 RGB."""
    from .data import load_rgb
    from .models import display_transform
    return display_transform({"input_size": size, "resize": resize})(load_rgb(path)).permute(1, 2, 0).numpy()


def _upscale(maps: np.ndarray, at_least: int = 24) -> np.ndarray:
    k = max(1, -(-at_least // maps.shape[-2]))
    return maps.repeat(k, -2).repeat(k, -1) if maps.ndim == 3 else maps.repeat(k, 1).repeat(k, 2)


def _units_section(units_path, ascent_path=None, resize: str = "stretch") -> dict:
    """Activation maps per stage with sparsity and dead channels, first-layer filters, per channel
    its gradient-ascent image and top test images with the patch that fired, class visualisations."""

    u = load_npz(units_path)
    meta = u["meta"]
    size = meta["input_size"]
    grids = []
    for i, img in enumerate(u["audit_images"]):
        row = {"image": figures.png_uri(img, 96, 112), "layers": []}
        for j, layer in enumerate(meta["layers"]):
            if f"grid_{j}" in u:
                maps = u[f"grid_{j}"][i].astype(np.float32)
                row["layers"].append({"name": layer["name"], "shape": layer["shape"],
                                      "mosaic": figures.png_uri(figures.mosaic(_upscale(maps), cols=8), 256, 512)})
        grids.append(row)
    filters = u["filters"]
    asc = load_npz(ascent_path) if ascent_path else None
    asc_of = {c: i for i, c in enumerate(asc["meta"]["channels"])} if asc else {}
    channels = []
    views: dict[str, np.ndarray] = {}
    for c in u["channels"]:
        c = int(c)
        tops = []
        for k in np.flatnonzero(u["pick_channel"] == c):
            path = str(u["paths"][k])
            view = views.setdefault(path, _model_view(path, size, resize))
            y0, y1, x0, x1 = u["boxes"][k]
            tops.append({"image": figures.png_uri(figures.draw_box(view, u["boxes"][k], width=max(1, size // 64)),
                                                  96, 112),
                         "patch": figures.png_uri(view[y0:y1, x0:x1], 56, 112),
                         "value": float(u["pick_value"][k]), "file": Path(path).name})
        ch = {"channel": c, "tops": tops, "ascent": None}
        if c in asc_of:
            ch["ascent"] = figures.png_uri(asc["channel_images"][asc_of[c]], 96, 112)
        channels.append(ch)
    classes = []
    if asc is not None:
        am = asc["meta"]
        classes = [{"name": n, "image": figures.png_uri(asc["class_images"][i], 96, 112),
                    "start": am["class_score"]["start"][i], "end": am["class_score"]["end"][i]}
                   for i, n in enumerate(am["class_names"])]
    return {"meta": meta, "grids": grids, "channels": channels, "classes": classes,
            "ascent": asc["meta"] if asc is not None else None,
            "filters": figures.png_uri(figures.mosaic(filters, cols=16, pad=1), 256, 640) if len(filters) else None,
            "n_filters": len(filters)}


def _compare_section(path) -> dict:
    c = read_json(path)
    return {**c, "cka_fig": figures.agreement_heatmap(c["models"], c["cka"], label="linear CKA", vmin=0)}


def collect_robust(inputs: dict, settings: dict) -> dict | None:
    """Calibration, invariance curves and adversarial results, as the checks and the report read them."""
    inv = {k[len("invariance_"):]: read_json(v) for k, v in inputs.items() if k.startswith("invariance_")}
    adv = {k[len("adversarial_"):]: load_npz(v) for k, v in inputs.items() if k.startswith("adversarial_")}
    if not inv and not adv and "calibration" not in inputs and "randomisation" not in inputs:
        return None
    rob = settings["robustness"]
    return {"invariance": inv, "adversarial": {a: v["meta"] for a, v in adv.items()}, "adversarial_arrays": adv,
            "calibration": read_json(inputs["calibration"]) if "calibration" in inputs else None,
            "randomisation": read_json(inputs["randomisation"]) if "randomisation" in inputs else None,
            "check_angle": rob["check_angle"], "check_epsilon": rob["adversarial"]["check_epsilon"]}


def _robust_section(rob: dict, names: list[str]) -> dict:
    out = {"calibration": rob["calibration"], "invariance": rob["invariance"], "adversarial": rob["adversarial"],
           "randomisation": rob["randomisation"]}
    out["randomisation_fig"] = figures.memorisation_curves(rob["randomisation"]) if rob["randomisation"] else None
    cal = rob["calibration"]
    out["reliability"] = figures.reliability_diagram(cal["before"], cal["after"], cal["temperature"]) if cal else None
    out["invariance_fig"] = figures.invariance_curves(rob["invariance"]) if rob["invariance"] else None
    out["adversarial_fig"] = figures.adversarial_curves(
        {a: (m["epsilons"], m["accuracy"]) for a, m in rob["adversarial"].items()},
        {a: v["flip_epsilon"] for a, v in rob["adversarial_arrays"].items()}) if rob["adversarial"] else None
    examples = []
    for attack, v in rob["adversarial_arrays"].items():
        eps = v["meta"]["example_epsilon"]
        for i, j in enumerate(v["example_index"]):
            orig, adv = v["images"][i].astype(np.float32), v["adv_images"][i].astype(np.float32)
            delta = (adv - orig) / (2 * max(eps, 1e-12) * 255) + 0.5  # amplified: +-eps spans the full range
            examples.append({"attack": attack, "eps": eps,
                             "orig": figures.png_uri(v["images"][i], 96, 112),
                             "delta": figures.png_uri((delta.clip(0, 1) * 255).astype(np.uint8), 96, 112),
                             "adv": figures.png_uri(v["adv_images"][i], 96, 112),
                             "true": names[int(v["targets"][j])],
                             "pred": names[int(v["clean_pred"][j])], "conf": float(v["clean_conf"][j]),
                             "adv_pred": names[int(v["adv_pred"][i])], "adv_conf": float(v["adv_conf"][i])})
    out["examples"] = examples
    return out


def _cam_gradcam(agree: dict | None, labels: dict, explain: dict) -> dict | None:
    """CAM and Grad-CAM side by side where both apply: their agreement, and Grad-CAM's layer."""
    if not agree or "cam" not in labels or "gradcam" not in labels:
        return None
    names = agree["methods"]
    if labels["cam"] not in names or labels["gradcam"] not in names:
        return None
    return {"r": agree["matrix"][names.index(labels["cam"])][names.index(labels["gradcam"])],
            "layer": explain["gradcam"]["meta"].get("layer")}


def collect(model: str, inputs: dict, methods: list[str]) -> dict:
    """Everything the report shows, read from the stage outputs of this run."""
    r = {"model": model,
         "dataset": read_json(inputs["dataset_info"]),
         "train": read_json(inputs["train_metrics"]),
         "history": read_history(inputs["history"]),
         "eval": read_json(inputs["eval_metrics"]),
         "explain": {}}
    with open(inputs["rejected"], newline="") as f:  # declared inputs, never a file found beside one
        r["rejected"] = list(csv.DictReader(f))
    r["conversions"] = {}
    for row in read_manifest(inputs["manifest"]):
        for why in filter(None, (row.get("converted") or "").split("; ")):
            r["conversions"][why] = r["conversions"].get(why, 0) + 1
    for m in list(methods) + ["random"]:
        if m in inputs:  # absent: the stage failed (see failed_stages)
            r["explain"][m] = load_npz(inputs[m])
    return r


def jinja_env(template: str | Path):
    """Autoescaping environment (class names, file names and config values are text, never markup)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
    env = Environment(loader=FileSystemLoader(str(Path(template).parent)), undefined=StrictUndefined,
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["fmt"] = _fmt
    env.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.1f}%"
    env.filters["toyaml"] = _yaml
    return env


def _yaml(value) -> str:
    """Config as compact YAML (lists of numbers on one line), as the user writes it."""
    import yaml
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True).rstrip()


def write_pdf(html: str, out_html, out_pdf) -> None:
    from weasyprint import HTML
    with atomic_path(out_pdf) as tmp:
        HTML(string=html, base_url=str(Path(out_html).parent)).write_pdf(str(tmp))


def render_report(model: str, inputs: dict, model_cfg: dict, dataset_cfg: dict, settings: dict,
                  template: str | Path, css: str | Path, out_html, out_summary, out_pdf=None,
                  benchmarks: dict | None = None) -> dict:
    failed = failed_stages(inputs)
    inputs = {k: v for k, v in inputs.items() if k not in failed}
    for key, rec in failed.items():
        log.warning("%s: stage %s %s failed (%s); its section says so", model, rec["rule"], rec["wildcards"], rec["error"])
    r = collect(model, inputs, settings["explain"]["methods"])
    r["robust"] = collect_robust(inputs, settings)
    verdicts = run_checks(r, settings["verdicts"])
    model_verdicts = [v for v in verdicts if v["method"] is None]
    status = overall(model_verdicts)  # about the model; each attribution method is judged in its own section
    versions = package_versions()
    audit = load_audit_set(inputs["audit_set"])
    attributions = _attribution_section(audit, r["explain"], verdicts)
    represent = _represent_section(inputs["represent"], [str(n) for n in audit["class_names"]],
                                   settings["represent"]["queries"]) if "represent" in inputs else None
    units = _units_section(inputs["units"], inputs.get("ascent"), model_cfg.get("resize", "stretch")) \
        if "units" in inputs else None
    compare = _compare_section(inputs["compare"]) if "compare" in inputs else None
    robust = _robust_section(r["robust"], [str(n) for n in audit["class_names"]]) if r["robust"] else None
    ev = r["eval"]
    stage_runs = read_benchmarks(benchmarks or {})
    failed_by_section: dict[str, list] = {}
    for rec in failed.values():
        failed_by_section.setdefault(rec["section"], []).append(rec)
    diag = diagnosis(r, model_cfg)
    present = {"diagnosis": diag is not None, "calibration": bool(robust and robust["calibration"]), "attributions": True,
               "representations": represent is not None, "units": units is not None,
               "invariance": bool(robust and robust["invariance"]), "adversarial": bool(robust and robust["adversarial"]),
               "randomisation": bool(robust and robust["randomisation"])}
    sections = [(sid, title) for sid, title in SECTIONS if present.get(sid, True) or sid in failed_by_section]
    summary = {
        "summary_version": SUMMARY_VERSION,
        "model": model,
        "dataset": r["dataset"]["name"],
        "status": status,  # worst of the model's own checks
        "degenerate": {k: (ev.get("degenerate") or {}).get(k) for k in ("is", "collapsed", "at_chance", "chance", "why")},
        "failed_stages": [{k: rec[k] for k in ("section", "rule", "wildcards", "error", "log")} for rec in failed.values()],
        "attribution_methods_passing": [row["method"] for row in attributions["rows"]
                                        if row["faith_status"] == "pass" and row["sanity_status"] == "pass"],
        "verdicts": verdicts,  # model checks, then CHECK:METHOD for each attribution method
        "metrics": {"accuracy": ev["accuracy"], "top5_accuracy": ev["top5_accuracy"], "macro_f1": ev["macro_f1"],
                    "n_test": ev["n_test"],
                    "baseline_accuracy": (ev["baseline"] or {}).get("accuracy"),
                    "gain_over_baseline": ev["gain_over_baseline"], "mcnemar_p": ev.get("mcnemar_p"),
                    "intervals": {v["check"]: {"value": v["value"], "n": v["n"] or 0, "ci_low": v["ci_low"],
                                               "ci_high": v["ci_high"], "method": v["interval"] or "none",
                                               "note": v["note"]}
                                  for v in model_verdicts if v["value"] is not None}},
        "attributions": {row["method"]: {"deletion_auc": row["deletion"], "insertion_auc": row["insertion"],
                                         "faithfulness_gain": row["gain"],
                                         "sanity_final_rank_corr": (row["sanity"] or {}).get("final_rank_corr")}
                         for row in attributions["rows"]},
        "representation": None if represent is None else {
            **{k: represent["meta"][k] for k in ("knn_accuracy", "k", "silhouette", "dim", "n")},
            "layers": None if units is None else [
                {k: layer[k] for k in ("name", "sparsity", "dead", "channels")} for layer in units["meta"]["layers"]],
            "cka_between_models": None if compare is None else {
                m: compare["cka"][compare["models"].index(model)][j] for j, m in enumerate(compare["models"])}},
        "robustness": None if robust is None else {
            "calibration": None if not robust["calibration"] else {
                "temperature": robust["calibration"]["temperature"],
                **{f"{k}_{when}": (robust["calibration"][when] or {}).get(k)
                   for k in ("ece", "mce", "nll", "brier", "ece_equal_mass") for when in ("before", "after")}},
            "invariance": {f: {"score": v["score"], "severities": v["severities"], "accuracy": v["accuracy"],
                               "consistency": v["consistency"],
                               "gradcam_equivariance_error": (v["drift"] or {}).get("equivariance_error")}
                           for f, v in robust["invariance"].items()},
            "adversarial": {a: {"epsilons": v["epsilons"], "accuracy": v["accuracy"], "n": v["n"],
                                "median_flip_epsilon": v["median_flip_epsilon"],
                                **{k: v[k] for k in ("components", "masking") if k in v}}
                            for a, v in robust["adversarial"].items()},
            "randomisation": None if not robust["randomisation"] else {
                "final_train_accuracy": {k: v[-1] for k, v in robust["randomisation"]["train_accuracy"].items()},
                "chance": robust["randomisation"]["chance"]}},
        "provenance": {"arch": model_cfg["arch"], "weights": model_cfg["weights"], "seed": settings["seed"],
                       "device": device_description(r["train"]["device"]),
                       "manifest_sha256": r["dataset"]["manifest_sha256"], "packages": versions,
                       "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "stage_runs": stage_runs},
    }
    html = jinja_env(template).get_template(Path(template).name).render(
        sections=sections, failed=failed_by_section, stage_runs=stage_runs,
        title=settings["report"]["title"], model=model, r=r, ev=ev, verdicts=model_verdicts, status=status,
        summary=summary, model_cfg=model_cfg, dataset_cfg=dataset_cfg, settings=settings, att=attributions,
        rep=represent, units=units, compare=compare, rob=robust, diag=diag,
        css=Path(css).read_text(),
        samples=_sample_grid(inputs["manifest"], r["dataset"]["classes"]),
        curves=figures.learning_curves(r["history"]) if r["history"] else None,
        confusion=figures.confusion(**{k: ev["confusion"][k] for k in ("rows", "columns", "matrix")}),
        mistakes=[{**m, "image": figures.png_uri(figures.thumbnail(m["path"]), 64), "file": Path(m["path"]).name}
                  for m in ev["mistakes"]],
    )
    write_text(out_html, html)
    if out_pdf:
        write_pdf(html, out_html, out_pdf)
    write_json(out_summary, summary)
    log.info("%s: report %s (status %s)", model, out_html, status)
    return summary
