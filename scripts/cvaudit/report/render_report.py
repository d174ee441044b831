"""One audit report per model: Jinja2 (autoescape on) -> self-contained HTML, PDF (WeasyPrint), summary.json."""
from __future__ import annotations

import csv
import datetime as dt
import logging
from pathlib import Path

import numpy as np

from cvaudit.core.files import load_audit_set, load_npz, read_history, read_json, stage_failure, write_json, write_text
from cvaudit.core.manifest import read_manifest
from cvaudit.core.registry import EXPORT_REASON, is_export_arch, load
from cvaudit.report import figures
from cvaudit.report.behaviour_sections import (
    conformal_summary,
    corruptions_summary,
    selective_summary,
    shape_texture_summary,
    slices_summary,
)
from cvaudit.report.checks import run_checks
from cvaudit.report.diagnose import diagnosis
from cvaudit.report.evidence import links as evidence_links
from cvaudit.report.evidence import write_evidence
from cvaudit.report.findings import findings
from cvaudit.report.judge import overall
from cvaudit.report.rendering import device_description, jinja_env, package_versions, read_benchmarks, write_pdf
from cvaudit.report.stage_sections import (
    clever_hans_section,
    collect_robust,
    compare_section,
    data_audit_section,
    embedding_summary,
    represent_section,
    robust_section,
    units_section,
)
from cvaudit.sections import AGREEMENT, SECTIONS, by_section, not_applicable

log = logging.getLogger("cvaudit.report.render_report")
SUMMARY_VERSION = 4


# A Clever-Hans suspect as summary.json carries it (report/summary.schema.yaml)
SHORTCUT_KEYS = ("kind", "class", "shape", "cluster", "size", "area", "box", "effect", "paste", "control_paste", "gain",
                 "remove", "control_remove")

def failed_stages(grouped: dict[str, dict[str, str]]) -> dict:
    """{(section, name): failure record} for the analysis stages that failed, each in the section that
    reads it (cvaudit.sections)."""
    return {(sid, name): {**rec, "section": sid} for sid, files in grouped.items() for name, path in files.items()
            if (rec := stage_failure(path))}


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
            from cvaudit.explain.methods import SHAP
            evals = SHAP(evals="auto").evals(*np.asarray(arrays["maps_pred"]).shape[-2:])
        return {"kind": "shap", "regions": float(np.median(arrays["shap_regions"])), "evals": evals}
    return None


def _road_clause(verdict: dict | None, faithful: str) -> str:
    """ROAD in the verdict sentence: said when it disagrees with deletion/insertion, or fails."""
    if not verdict or verdict["status"] in ("n/a", "inconclusive") or verdict["status"] == faithful:
        return ""
    if verdict["status"] == "pass":
        return (f" Under ROAD (removed pixels imputed from their neighbours, so the mask's shape leaks nothing) it does "
                f"beat a random map (gain {verdict['value']:.3f}).")
    return (f" Under ROAD (removed pixels imputed from their neighbours, so the mask's shape leaks nothing) it "
            f"{'does not beat' if verdict['status'] == 'fail' else 'barely beats'} a random map (gain {verdict['value']:.3f}): "
            "what the deletion curve credits it with may be the mask's shape, not the pixels.")


def _class_clause(verdict: dict | None, rl: dict | None) -> str:
    """The random-logit test in the verdict sentence: said when it warns or fails, or cannot decide."""
    if not verdict or verdict["status"] in ("pass", "n/a") or not rl:
        return ""
    if verdict["status"] == "inconclusive":
        return f" Whether its maps depend on the class is inconclusive ({verdict['settle']})."
    return (f" Its maps hardly depend on the class: explained for a random other class, the same image's map has a rank "
            f"correlation of {verdict['value']:.2f} with it (n = {verdict['n']}), so it shows the image more than the "
            "evidence for one class.")


def _sensitivity_clause(sens: dict | None) -> str:
    if not sens:
        return ""
    return (f" Noise of ±{sens['radius']:g} per pixel moves its map by up to {100 * sens['median']:.0f}% of its size "
            f"(median max-sensitivity, {sens['samples']} noisy copies of each of {len(sens['per_image'])} images).")


LOW_STABILITY = 0.5  # a rank correlation between two seeds' maps below this is flagged in the report


def _stability_clause(st: dict | None) -> str:
    if not st or st.get("median") is None:
        return ""
    if st["median"] < LOW_STABILITY:
        return (f" Its maps change with its random draws: with another seed the same image's map has a rank correlation "
                f"of only {st['median']:.2f} with it (median of {len(st['per_image'])} images), so one map shows the draw "
                "as much as the model; raise its samples.")
    return f" Another seed gives nearly the same maps (rank correlation {st['median']:.2f}, median of {len(st['per_image'])} images)."


def _axiom_clause(axiom: dict | None) -> str:
    """The verdict sentence's last words for a method that breaks its own promise (completeness,
    efficiency, conservation) on this model's maps."""
    if not axiom or axiom["within"] >= axiom["of"]:
        return ""
    return (f" It breaks its own axiom here: {axiom['of'] - axiom['within']} of {axiom['of']} maps miss "
            f"that {axiom['promise'] or 'completeness'} by more than {100 * axiom['tolerance']:g}%.")


def _attribution_section(audit: dict, explain: dict, verdicts: list[dict], agree: dict | None) -> dict:
    """Gallery (audit images x methods, shared colour scale), trust tables, curves, and the agreement
    between methods (the method_agreement stage's)."""
    from cvaudit.report.attribution_checks import method_sentence

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
        c, rd = by.get(("class_sensitivity", m)), by.get(("road_gain", m))
        rows.append({"method": m, "label": meta["label"], "kind": meta["kind"], "reads": meta["reads"],
                     "layer": meta.get("layer"), "deletion": meta["faithfulness"]["deletion_auc"],
                     "insertion": meta["faithfulness"]["insertion_auc"], "gain": f["value"] if f else None,
                     "gain_ci": (f["ci_low"], f["ci_high"]) if f and f["ci_low"] is not None else None,
                     "gain_n": f["n"] if f else None, "faith_settle": f["settle"] if f else "",
                     "sanity_settle": s["settle"] if s else "",
                     "completeness": meta.get("completeness"), "axiom": meta.get("axiom"), "fit": _surrogate_fit(usable[m], meta),
                     "faith_status": f["status"] if f else "n/a", "sanity": meta.get("sanity"),
                     "sanity_status": s["status"] if s else "n/a", "seconds": meta.get("attribution_seconds"),
                     "sentence": method_sentence(meta["label"], f["status"] if f else "n/a",
                                                 s["status"] if s else "n/a", s["value"] if s else None)
                     + _road_clause(rd, f["status"] if f else "n/a") + _class_clause(c, meta.get("random_logit")) + _sensitivity_clause(meta.get("sensitivity"))
                     + _stability_clause(meta.get("stability")) + _axiom_clause(meta.get("axiom")),
                     "stability": meta.get("stability"),
                     "unstable": bool(meta.get("stability") and meta["stability"]["median"] is not None
                                      and meta["stability"]["median"] < LOW_STABILITY),
                     "class_corr": c["value"] if c else None,
                     "class_ci": (c["ci_low"], c["ci_high"]) if c and c["ci_low"] is not None else None,
                     "class_status": c["status"] if c else "n/a", "class_n": c["n"] if c else None, "class_settle": c["settle"] if c else "",
                     "sensitivity": meta.get("sensitivity"), "road_gain": rd["value"] if rd else None,
                     "road_ci": (rd["ci_low"], rd["ci_high"]) if rd and rd["ci_low"] is not None else None,
                     "road_status": rd["status"] if rd else "n/a", "road_settle": rd["settle"] if rd else ""})
    rand = usable.get("random", {}).get("meta", {}).get("faithfulness")
    curves = {labels[m]: {"deletion": usable[m]["faith_deletion"], "insertion": usable[m]["faith_insertion"]}
              for m in usable}
    fractions = next(iter(usable.values()))["faith_fractions"] if usable else None
    stages = rows[0]["sanity"]["stages"] if rows and rows[0]["sanity"] else []
    return {
        "methods": [labels[m] for m in shown],
        "unstable": [labels[m] for m in shown if any(r["method"] == m and r["unstable"] for r in rows)],
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


def _cam_gradcam(agree: dict | None, labels: dict, explain: dict) -> dict | None:
    """CAM and Grad-CAM side by side where both apply: their agreement, and Grad-CAM's layer."""
    if not agree or "cam" not in labels or "gradcam" not in labels:
        return None
    names = agree["methods"]
    if labels["cam"] not in names or labels["gradcam"] not in names:
        return None
    return {"r": agree["matrix"][names.index(labels["cam"])][names.index(labels["gradcam"])],
            "layer": explain["gradcam"]["meta"].get("layer")}


def collect(model: str, inputs: dict, maps: dict[str, str]) -> dict:
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
    for m, path in maps.items():  # a method whose stage failed is absent (see failed_stages)
        r["explain"][m] = load_npz(path)
    return r


def render_report(model: str, inputs: dict, model_cfg: dict, dataset_cfg: dict, settings: dict,
                  template: str | Path, css: str | Path, out_html, out_summary, out_pdf=None,
                  benchmarks: dict | None = None, out_evidence=None) -> dict:
    grouped = by_section(inputs)
    failed = failed_stages(grouped)
    grouped = {sid: {name: path for name, path in files.items() if (sid, name) not in failed}
               for sid, files in grouped.items()}
    for rec in failed.values():
        log.warning("%s: stage %s %s failed (%s); its section says so", model, rec["rule"], rec["wildcards"], rec["error"])
    att_files = dict(grouped.get("attributions", {}))
    agreement_file = att_files.pop(AGREEMENT, None)
    r = collect(model, inputs, att_files)
    r["robust"] = collect_robust(grouped, settings)
    audit_files = grouped.get("data_audit", {})
    r["data_audit"] = data_audit_section(audit_files["audit"], settings["data_audit"]["examples"],
                                         audit_files.get("probs"), audit_files.get("embedding")) \
        if "audit" in audit_files else None
    ch_file = grouped.get("clever_hans", {}).get("results")
    r["clever_hans"] = clever_hans_section(ch_file) if ch_file else None
    reps, unit_files = grouped.get("representations", {}), grouped.get("units", {})
    built = {s.id: load(s.build)(grouped[s.id]) for s in SECTIONS if s.build and grouped.get(s.id)}
    r["built"] = built  # the sections a verdict reads (the concepts section: forbidden_concept)
    verdicts = run_checks(r, settings["verdicts"])
    model_verdicts = [v for v in verdicts if v["method"] is None]
    status = overall(model_verdicts)  # about the model; each attribution method is judged in its own section
    versions = package_versions()
    audit = load_audit_set(inputs["audit_set"])
    agree = read_json(agreement_file) if agreement_file else None
    attributions = _attribution_section(audit, r["explain"], verdicts, agree if agree and agree["matrix"] else None)
    represent = represent_section(reps["represent"], [str(n) for n in audit["class_names"]],
                                   settings["represent"]["queries"]) if "represent" in reps else None
    units = units_section(unit_files["units"], unit_files.get("ascent")) \
        if "units" in unit_files else None
    compare = compare_section(reps["compare"]) if "compare" in reps else None
    robust = robust_section(r["robust"], [str(n) for n in audit["class_names"]]) if r["robust"] else None
    ev = r["eval"]
    stage_runs = read_benchmarks(benchmarks or {})
    found = findings(verdicts, stage_runs, len(audit["class_names"]), settings["audit"]["per_class"])
    evidence = write_evidence(Path(out_evidence or Path(out_html).parent / "evidence"), audit_files.get("audit"),
                              audit_files.get("embedding"),
                              (r["data_audit"]["by_model"] or {}).get("all") if r["data_audit"] else None, ch_file,
                              inputs.get("rejected"))
    failed_by_section: dict[str, list] = {}
    for rec in failed.values():
        failed_by_section.setdefault(rec["section"], []).append(rec)
    diag = diagnosis(r, model_cfg)
    ensemble = model_cfg["arch"] == "ensemble"
    present = {**{s.id: built.get(s.id) is not None for s in SECTIONS if s.build},
               "diagnosis": diag is not None, "calibration": bool(robust and robust["calibration"]), "attributions": True,
               "data_audit": r["data_audit"] is not None, "clever_hans": r["clever_hans"] is not None,
               "representations": represent is not None,
               # an ensemble's units and layers are its members': the sections say so when the views are on
               "units": units is not None or (ensemble and settings["represent"]["enabled"]),
               "layers": built.get("layers") is not None or (ensemble and settings["represent"]["enabled"]
                                                             and settings["represent"]["layer_views"]["enabled"]),
               "invariance": bool(robust and robust["invariance"]), "adversarial": bool(robust and robust["adversarial"]),
               "shuffled_labels": bool(robust and robust["shuffled_labels"]), "slices": bool(robust and robust["slices"]),
               "shape_texture": bool(robust and robust["shape_texture"]),
               "corruptions": bool(robust and robust["corruptions"]), "shift": bool(robust and robust["shift"])}
    black_box = not_applicable(model_cfg, settings)  # sections shown with the reason they cannot be had
    sections = [(s.id, s.title) for s in SECTIONS if present.get(s.id, True) or s.id in failed_by_section or s.id in black_box]
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
        "findings": {"headline": found["headline"], "undecided": found["undecided"]},
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
                                         "sanity_final_rank_corr": (row["sanity"] or {}).get("final_rank_corr"),
                                         "class_sensitivity": row["class_corr"], "road_gain": row["road_gain"],
                                         "max_sensitivity": (row["sensitivity"] or {}).get("median"),
                                         "seed_stability": (row["stability"] or {}).get("median"),
                                         "axiom_kept": None if not row["axiom"] else
                                         {k: row["axiom"][k] for k in ("within", "of", "tolerance", "median_error")}}
                         for row in attributions["rows"]},
        "representation": None if represent is None else {
            **{k: represent["meta"][k] for k in ("knn_accuracy", "k", "silhouette", "dim", "n")},
            "layer_uniformity": represent["meta"].get("uniformity"),
            "layers": None if units is None else [
                {k: layer[k] for k in ("name", "sparsity", "dead", "channels")} for layer in units["meta"]["layers"]],
            "cka_between_models": None if compare is None else {
                m: compare["cka"][compare["models"].index(model)][j] for j, m in enumerate(compare["models"])}},
        "data_audit": None if r["data_audit"] is None else {
            k: r["data_audit"]["meta"][k] for k in ("n", "leaked", "label_issues", "max_distance")} | {
            "near_duplicate_pairs": r["data_audit"]["meta"]["duplicates"]["pairs"],
            "copies": r["data_audit"]["meta"].get("copies"),
            "by_split": r["data_audit"]["meta"]["duplicates"]["by_split"],
            "leaked_share": r["data_audit"]["meta"]["duplicates"]["leaked_share"],
            "outliers": {k: v["count"] for k, v in r["data_audit"]["meta"]["outliers"].items()},
            "label_issues_by_model": (r["data_audit"]["by_model"] or {}).get("count"),
            "embedding_duplicates": embedding_summary(r["data_audit"]["embedding"])},
        "clever_hans": None if r["clever_hans"] is None else {
            k: r["clever_hans"]["meta"][k] for k in ("n", "n_test", "n_train", "method", "grid", "n_classes_analysed")} | {
            "flagged": [{k: f.get(k) for k in SHORTCUT_KEYS} for f in r["clever_hans"]["meta"]["flagged"]],
            "global": r["clever_hans"]["meta"]["global"],
            "strategies": {e["class"]: e.get("k") for e in r["clever_hans"]["meta"]["classes"]}},
        "robustness": None if robust is None else {
            "calibration": None if not robust["calibration"] else {
                "temperature": robust["calibration"]["temperature"],
                **{f"{k}_{when}": (robust["calibration"][when] or {}).get(k)
                   for k in ("ece", "mce", "nll", "brier", "ece_equal_mass") for when in ("before", "after")},
                "conformal": conformal_summary(robust["calibration"].get("conformal")),
                "selective": selective_summary(robust["calibration"].get("selective"))},
            "invariance": {f: {"score": v["score"], "severities": v["severities"], "accuracy": v["accuracy"],
                               "consistency": v["consistency"],
                               "gradcam_equivariance_error": (v["drift"] or {}).get("equivariance_error")}
                           for f, v in robust["invariance"].items()},
            "adversarial": {a: {"epsilons": v["epsilons"], "accuracy": v["accuracy"], "n": v["n"],
                                "median_flip_epsilon": v["median_flip_epsilon"],
                                **{k: v[k] for k in ("components", "masking") if k in v}}
                            for a, v in robust["adversarial"].items()},
            "slices": slices_summary(r["robust"]["slices"]),
            "shape_texture": shape_texture_summary(r["robust"]["shape_texture"]),
            "corruptions": corruptions_summary(r["robust"]["corruptions"]),
            "shift": None if not r["robust"]["shift"] else {
                "in_distribution": r["robust"]["shift"]["in_distribution"], "sets": r["robust"]["shift"]["sets"]},
            "shuffled_labels": None if not robust["shuffled_labels"] else {
                "final_train_accuracy": {k: v[-1] for k, v in robust["shuffled_labels"]["train_accuracy"].items()},
                "chance": robust["shuffled_labels"]["chance"]}},
        **{s.summary_key or s.id: load(s.summary)(built.get(s.id)) for s in SECTIONS if s.summary},
        "evidence": {k: {"file": f"evidence/{k}.csv", "rows": n} for k, n in evidence.items()},
        "provenance": {"arch": model_cfg["arch"], "weights": r["train"].get("weights", model_cfg["weights"]), "seed": settings["seed"],
                       "device": device_description(r["train"]["device"]),
                       "manifest_sha256": r["dataset"]["manifest_sha256"], "packages": versions,
                       "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "stage_runs": stage_runs},
    }
    html = jinja_env(template).get_template(Path(template).name).render(
        sections=sections, failed=failed_by_section, stage_runs=stage_runs, black_box=black_box,
        exported=EXPORT_REASON if is_export_arch(model_cfg["arch"]) else None,
        title=settings["report"]["title"], model=model, r=r, ev=ev, verdicts=model_verdicts, status=status, found=found,
        summary=summary, evidence=evidence_links(evidence), model_cfg=model_cfg, dataset_cfg=dataset_cfg, settings=settings, att=attributions,
        rep=represent, units=units, built=built, compare=compare, rob=robust, diag=diag,
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
