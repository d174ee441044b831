"""The comparison report across every model of a run, and the exit-status gate.

One table of metrics and verdicts (best per column marked, within each dataset), accuracy against
robustness and calibration, the same test images explained side by side by each model of a
dataset, CKA between those models, and the baselines: the classic-ML baseline of each dataset and
whichever fully connected net the config lists, so a reader sees what the CNN and transfer
learning buy.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cvaudit import CvauditError
from cvaudit.core import stats
from cvaudit.core.calibration_error import ece
from cvaudit.core.files import read_json, stage_failure, write_json, write_text
from cvaudit.core.registry import EXPORT_KINDS, is_export_arch
from cvaudit.report.judge import STATUS_ORDER

log = logging.getLogger("cvaudit.report.compare_models")

# Columns of the metric table: (key, label, higher is better). Values come from each summary.json.
COLUMNS = [("accuracy", "accuracy", True), ("macro_f1", "macro F1", True),
           ("gain_over_baseline", "gain over classic ML", True), ("ece", "ECE", False),
           ("ece_after", "ECE after T", False), ("aurc", "AURC", False),
           ("ood_auroc", "shift detected (MSP AUROC)", True), ("invariance", "invariance score (mean)", True),
           ("rotation_accuracy", "accuracy rotated", True), ("robust_accuracy", "accuracy under the strongest attack", True),
           ("knn_accuracy", "k-NN accuracy", True), ("methods_passing", "attribution methods passing", True)]


def kind_of(model_cfg: dict) -> str:
    """What sort of model this is, for a reader comparing them."""
    arch, weights = model_cfg["arch"], model_cfg.get("weights", "none")
    if arch == "ensemble":
        return "ensemble of " + ", ".join(model_cfg.get("members") or [])
    if arch.startswith("timm:vit") or arch.startswith("torchvision:vit"):
        return "vision transformer" + (" from scratch" if weights in (None, "none") and model_cfg.get("train") is not False else "")
    if arch == "mlp":
        return "fully connected net"
    if is_export_arch(arch):
        return f"{EXPORT_KINDS[arch.split(':', 1)[0]]} export, a black box"
    if model_cfg.get("train") is False:
        return "pretrained, as it is"
    if weights not in (None, "none"):
        return "transfer learning"
    return "CNN from scratch" if arch == "simple_cnn" else "trained from scratch"


def metric_row(summary: dict, model_cfg: dict) -> dict:
    """One row of the metric table from a model's summary.json."""
    m, rob, rep = summary["metrics"], summary.get("robustness") or {}, summary.get("representation") or {}
    verdicts = {v["name"]: v for v in summary["verdicts"]}
    inv = rob.get("invariance") or {}
    cal = rob.get("calibration") or {}
    sel = cal.get("selective") or {}
    intervals = dict(m.get("intervals") or {})
    if sel:  # the comparison ranks by AURC only where the intervals are apart
        intervals["aurc"] = {"value": sel["aurc"], "ci_low": sel["ci_low"], "ci_high": sel["ci_high"]}
    # how well the confidence tells a shifted set from the own test split: the set told apart least
    ood = [s["ood"]["scores"]["msp"]["auroc"] for s in ((rob.get("shift") or {}).get("sets") or {}).values()
           if (s.get("ood") or {}).get("scores", {}).get("msp")]
    if ood:
        intervals["ood_auroc"] = min(ood, key=lambda e: e["value"])
    return {
        "model": summary["model"], "dataset": summary["dataset"], "kind": kind_of(model_cfg),
        "degenerate": (summary.get("degenerate") or {}).get("why") if (summary.get("degenerate") or {}).get("is") else "",
        "arch": model_cfg["arch"], "status": summary["status"], "failed_stages": summary.get("failed_stages", []),
        "values": {
            "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "gain_over_baseline": m["gain_over_baseline"],
            "ece": cal.get("ece_before"), "ece_after": cal.get("ece_after"), "aurc": sel.get("aurc"),
            "ood_auroc": intervals["ood_auroc"]["value"] if ood else None,
            "invariance": float(np.mean([v["score"] for v in inv.values()]))  # relative to clean accuracy:
            if inv and not (summary.get("degenerate") or {}).get("is") else None,  # n/a for a degenerate model
            "rotation_accuracy": (verdicts.get("rotation_accuracy") or {}).get("value"),
            "robust_accuracy": (verdicts.get("robust_accuracy") or {}).get("value"),
            "knn_accuracy": rep.get("knn_accuracy"),
            "methods_passing": len(summary["attribution_methods_passing"]),
        },
        "verdicts": {v["name"]: v["status"] for v in summary["verdicts"] if v["method"] is None},
        "intervals": intervals,
    }


def _apart(a: dict, b: dict, key: str, higher: bool, correct: dict) -> bool:
    """Can model a's value in column `key` be told apart from b's (a the better)? Accuracy: McNemar's exact
    test on the same test images (p < 0.05); other columns with intervals: the 95% intervals do not overlap;
    columns without intervals: never."""
    if key == "accuracy" and a["model"] in correct and b["model"] in correct:
        p = stats.mcnemar_p(correct[a["model"]], correct[b["model"]])
        return p is not None and p < 0.05
    ia, ib = a["intervals"].get(key), b["intervals"].get(key)
    if not ia or not ib or None in (ia["ci_low"], ib["ci_low"]):
        return False
    return ia["ci_low"] > ib["ci_high"] if higher else ia["ci_high"] < ib["ci_low"]


def mark_best(rows: list[dict], correct: dict | None = None) -> None:
    """rows[i]["best"]: the columns where that model is best among the models of its dataset and the
    difference to every other model is significant; rows[i]["tie"]: the columns where it ties with the
    best (the data cannot tell them apart). correct: {model: per-test-image correctness} for McNemar."""
    correct = correct or {}
    for r in rows:
        r["best"], r["tie"] = [], []
    for dataset in sorted({r["dataset"] for r in rows}):
        group = [r for r in rows if r["dataset"] == dataset and not r.get("degenerate")]  # named, never ranked
        if len(group) < 2:
            continue
        for key, _, higher in COLUMNS:
            vals = [r for r in group if r["values"][key] is not None]
            if len(vals) < 2:
                continue
            top = max(vals, key=lambda r: r["values"][key] if higher else -r["values"][key])
            tied = [r for r in vals if r is not top and not _apart(top, r, key, higher, correct)]
            if not tied:
                top["best"].append(key)
            else:
                for r in [top] + tied:
                    r["tie"].append(key)


def _side_by_side_section(dataset: str, shared: dict, methods: list[str]) -> dict:
    """The side_by_side stage's images and maps as figures (or its failure, said in the comparison)."""
    from cvaudit.report import figures
    if "failed" in shared:
        return {"dataset": dataset, "failed": shared["failed"], "methods": [], "rows": []}
    labels = shared["labels"]
    rows = []
    for i, (file, true) in enumerate(zip(shared["files"], shared["true"])):
        cells = []
        for name, r in shared["models"].items():
            img = r["images"][i]
            pred = r["class_names"][int(r["preds"][i])]
            tiles = []
            for m in methods:
                maps = r["maps"][m]
                tiles.append({"method": labels[m], "reason": r["reasons"].get(m),
                              "uri": None if maps is None else figures.png_uri(
                                  figures.overlay(img, figures.display_scale(maps[i]), 1.0), 96, 112)})
            cells.append({"model": name, "image": figures.png_uri(img, 96, 112), "pred": pred,
                          "conf": float(r["confidence"][i]), "correct": pred == true, "tiles": tiles})
        rows.append({"file": file, "true": true, "cells": cells})
    not_applicable = {f"{labels[m]} for {name}": why for name, r in shared["models"].items()
                      for m, why in r["reasons"].items()}
    return {"dataset": dataset, "failed": None, "models": list(shared["models"]), "methods": [labels[m] for m in methods],
            "rows": rows,
            "not_applicable": not_applicable}


def gate_problems(summaries: list[dict], fail_on: str) -> list[str]:
    """Why a run should exit non-zero under config key audit.fail_on (empty: it passes the gate)."""
    if fail_on == "never":
        return []
    problems = []
    for s in summaries:
        if STATUS_ORDER[s["status"]] >= STATUS_ORDER[fail_on]:
            bad = [f"{v['label']} {v['status']} ({v['value']:.4g}" + (
                   f", 95% interval [{v['ci_low']:.3g}, {v['ci_high']:.3g}], n = {v['n']})"
                   if v.get("ci_low") is not None else ")")
                   for v in s["verdicts"]
                   if v["method"] is None and STATUS_ORDER[v["status"]] >= STATUS_ORDER[fail_on]
                   and v["value"] is not None]
            problems.append(f"model {s['model']}: overall {s['status']}: " + "; ".join(bad))
        for f in s.get("failed_stages", []):
            problems.append(f"model {s['model']}: stage {f['rule']} {f['wildcards']} failed: {f['error']}")
    return problems


def run_gate(summaries: dict, fail_on: str, out) -> dict:
    """Write results/gate.json: the evidence stays on disk whatever the outcome (rule gate_check fails the
    run afterwards, so Snakemake never deletes this file as the output of a failed job)."""
    loaded = [read_json(p) for p in summaries.values()]
    problems = gate_problems(loaded, fail_on)
    res = {"fail_on": fail_on, "passed": not problems, "problems": problems,
           "models": {s["model"]: {"status": s["status"], "failed_stages": len(s.get("failed_stages", []))}
                      for s in loaded}}
    write_json(out, res)
    return res


def check_gate(gate_json) -> None:
    """Raise (non-zero exit) if gate.json says the gate failed, naming the models, the checks and the file."""
    g = read_json(gate_json)
    if not g["passed"]:
        raise CvauditError(f"the audit gate (config key audit.fail_on: {g['fail_on']}) failed:\n  "
                           + "\n  ".join(g["problems"])
                           + f"\nThe reports are written, and {gate_json} lists every model and problem. To report "
                           "without failing the run, set audit.fail_on: never.")


def error_consistencies(datasets: list[str], rows: list[dict], correct: dict, paths: dict, seed: int = 0) -> dict:
    """Per dataset with two or more models: the error consistency (Cohen's kappa, Geirhos et al. 2020) of
    every pair on the test images they share, with its interval, and the kappa matrix as a heat map."""
    from cvaudit.report import figures
    out = {}
    for d in datasets:
        models = [r["model"] for r in rows if r["dataset"] == d and r["model"] in correct]
        if len(models) < 2:
            continue
        k = np.eye(len(models))
        pairs = []
        for i, a in enumerate(models):
            for j in range(i + 1, len(models)):
                b = models[j]
                ca, cb = correct[a], correct[b]
                if paths.get(a) != paths.get(b):  # the same test images, matched by path
                    common = sorted(set(paths[a]) & set(paths[b]))
                    ia, ib = {p: n for n, p in enumerate(paths[a])}, {p: n for n, p in enumerate(paths[b])}
                    ca, cb = ca[[ia[p] for p in common]], cb[[ib[p] for p in common]]
                est = stats.error_consistency(ca, cb, seed=seed)
                k[i, j] = k[j, i] = np.nan if est["value"] is None else est["value"]
                pairs.append({"a": a, "b": b, "accuracy_a": float(np.mean(ca)), "accuracy_b": float(np.mean(cb)),
                              "kappa": est})
        out[d] = {"models": models, "pairs": pairs, "matrix": k.tolist(),
                  "fig": figures.agreement_heatmap(models, np.nan_to_num(k).tolist(), label="error consistency (kappa)",
                                                   vmin=-1)}
    return out


def _ece_diff(ca, ka, cb, kb, axis=-1):
    """ECE (core.calibration_error.ece, 15 bins) of a minus that of b on the same (resampled) images."""
    return ece(ca, ka) - ece(cb, kb)


def ensembles_against_members(model_cfgs: dict, correct: dict, conf: dict, paths: dict, seed: int = 0) -> list[dict]:
    """For every ensemble (arch: ensemble) with its members' predictions on the same test images: its accuracy and
    ECE minus each member's, with paired bootstrap 95% intervals (and McNemar's exact p for accuracy)."""
    out = []
    for m, cfg in model_cfgs.items():
        if cfg.get("arch") != "ensemble" or m not in correct:
            continue
        ke = correct[m].astype(float)
        rows = []
        for member in cfg.get("members") or []:
            if member not in correct or paths.get(m) != paths.get(member):
                rows.append({"member": member, "reason": "its predictions are not on the same test images"})
                continue
            km = correct[member].astype(float)
            rows.append({"member": member, "accuracy": float(km.mean()), "ece": float(ece(conf[member], km)[0]),
                         "accuracy_diff": stats.paired_difference(ke, km, seed),
                         "mcnemar_p": stats.mcnemar_p(correct[m], correct[member]),
                         "ece_diff": stats.bootstrap(_ece_diff, conf[m], ke, conf[member], km, seed=seed,
                                                     value=float(_ece_diff(conf[m], ke, conf[member], km)[0]))})
        out.append({"model": m, "n": int(len(ke)), "accuracy": float(ke.mean()), "ece": float(ece(conf[m], ke)[0]),
                    "members": rows})
    return out


def shortcuts(loaded: dict) -> list[dict]:
    """Each model's Clever-Hans finding, from its summary: the verdict, and every flagged cluster's flip rates."""
    out = []
    for m, s in loaded.items():
        ch = s.get("clever_hans")
        if not ch:
            continue
        v = next((v for v in s["verdicts"] if v["check"] == "shortcut_suspected"), None)
        out.append({"model": m, "dataset": s["dataset"], "status": v["status"] if v else "n/a",
                    "note": v["note"] if v else "", **{k: ch[k] for k in ("n", "method", "n_classes_analysed", "flagged")},
                    "cheats": bool(v and v["status"] in ("warn", "fail"))})
    return out


def same_data(loaded: dict, model_cfgs: dict) -> None:
    """Refuse to compare reports of one dataset that were built from different data (manifests)."""
    seen: dict[str, tuple[str, str]] = {}
    for m, s in loaded.items():
        d, digest = model_cfgs[m]["dataset"], s["provenance"]["manifest_sha256"]
        if d in seen and seen[d][1] != digest:
            other = seen[d][0]
            raise CvauditError(f"the reports of {other} and {m} were built from different data of dataset '{d}' "
                               f"(manifest {seen[d][1][:12]} vs {digest[:12]}); rerun both on the same data: "
                               f"snakemake --forcerun results/data/{d}/manifest.csv")
        seen.setdefault(d, (m, digest))


def render_comparison(summaries: dict, model_cfgs: dict, baselines: dict, compares: dict, shared: dict,
                      settings: dict, template, css, out_html, out_summary, out_pdf=None,
                      benchmarks: dict | None = None, probs: dict | None = None) -> dict:
    """summaries: {model: summary.json}; baselines: {dataset: baseline.json}; compares: {dataset:
    representations.json}; shared: {dataset: side_by_side.load_side_by_side result}; benchmarks: {model: {stage: tsv}}."""
    from cvaudit.report import figures
    from cvaudit.report.rendering import jinja_env, package_versions, read_benchmarks, write_pdf

    loaded = {m: read_json(p) for m, p in summaries.items()}
    same_data(loaded, model_cfgs)
    rows = [metric_row(s, model_cfgs[m]) for m, s in loaded.items()]
    correct, paths, conf = {}, {}, {}
    for m, p in (probs or {}).items():
        with np.load(p, allow_pickle=False) as z:
            correct[m] = z["probs"].argmax(1) == z["targets"]
            conf[m] = z["probs"].max(1)
            paths[m] = [str(s) for s in z["paths"]] if "paths" in z.files else None
    mark_best(rows, correct)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    data_audits = {}  # the data audit of each dataset, as its models' reports carry it (the same file)
    embedding_leaks = {}  # and what each model's own embedding found beyond it (differs by model)
    for m, s in loaded.items():
        if s.get("data_audit"):
            audit = dict(s["data_audit"])
            found = audit.pop("embedding_duplicates", None)
            data_audits.setdefault(model_cfgs[m]["dataset"], audit)
            if found:
                embedding_leaks[m] = {"dataset": model_cfgs[m]["dataset"], **found}
    consistency = error_consistencies(datasets, rows, correct, paths, settings.get("seed", 0))
    ensembles = ensembles_against_members(model_cfgs, correct, conf, paths, settings.get("seed", 0))
    cheating = shortcuts(loaded)
    base = {}
    for d, p in baselines.items():
        b = read_json(p)
        base[d] = {"name": b.get("name", "classic ML"), "accuracy": b.get("accuracy") if b.get("available") else None,
                   "reason": b.get("reason")}
    cka = {}
    for d, p in compares.items():
        if (rec := stage_failure(p)):
            cka[d] = {"failed": rec}
            continue
        c = read_json(p)
        cka[d] = {"models": c["models"], "matrix": c["cka"], "n_images": c["n_images"],
                  "fig": figures.agreement_heatmap(c["models"], c["cka"], label="linear CKA", vmin=0),
                  "uniformity": c.get("uniformity") or {}, "transformer": c.get("transformer") or {},
                  "layer_pairs": [{**pair, "fig": figures.layer_cka_heatmap(pair)} for pair in c.get("layer_pairs", [])]}
    checks = list(dict.fromkeys(k for r in rows for k in r["verdicts"]))
    methods = settings["report"]["compare"]["methods"]
    side = [_side_by_side_section(d, shared[d], methods) for d in datasets if d in shared]
    stage_runs = []
    for model, files in (benchmarks or {}).items():
        runs = read_benchmarks(files)
        if runs:
            stage_runs.append({"stage": f"{model} ({len(runs)} jobs)",
                               "seconds": sum(r["seconds"] or 0 for r in runs),
                               "cpu_seconds": sum(r["cpu_seconds"] or 0 for r in runs),
                               "max_rss_mb": max((r["max_rss_mb"] or 0 for r in runs), default=None)})
    scatter = figures.comparison_scatter(rows, [("invariance", "invariance score (mean over families)"),
                                                ("robust_accuracy", "accuracy under the strongest attack"),
                                                ("ece", "expected calibration error (lower is better)")])
    summary = {"summary_version": 1, "models": {r["model"]: {"dataset": r["dataset"], "kind": r["kind"],
                                                            "status": r["status"], **r["values"], "best": r["best"], "tie": r["tie"],
                                                            "intervals": r["intervals"],
                                                            "failed_stages": len(r["failed_stages"])} for r in rows},
               "baselines": base, "ensembles": ensembles, "data_audit": data_audits, "embedding_duplicates": embedding_leaks,
               "clever_hans": {c["model"]: {k: c[k] for k in ("status", "cheats", "n", "method", "flagged")} for c in cheating},
               "error_consistency": {d: {k: c[k] for k in ("models", "pairs")} for d, c in consistency.items()},
               "cka_between_models": {d: {k: c[k] for k in ("models", "matrix")}
                                                         for d, c in cka.items() if "failed" not in c},
               "layer_uniformity": {d: c["uniformity"] for d, c in cka.items() if "failed" not in c},
               "transformer_vs_cnn": {d: [{k: p[k] for k in ("rows", "columns", "n_images", "row_layers", "column_layers",
                                                             "matrix", "uniformity_difference")} for p in c["layer_pairs"]]
                                      for d, c in cka.items() if "failed" not in c and c["layer_pairs"]}}
    html = jinja_env(template).get_template(Path(template).name).render(
        title=settings["report"]["title"], rows=rows, columns=COLUMNS, checks=checks, datasets=datasets, base=base,
        cka=cka, consistency=consistency, ensembles=ensembles, data_audits=data_audits, embedding_leaks=embedding_leaks,
        cheating=cheating, side=side,
        scatter=scatter, stage_runs=stage_runs, versions=package_versions(),
        labels={r["model"]: r["kind"] for r in rows}, css=Path(css).read_text(), settings=settings)
    write_text(out_html, html)
    if out_pdf:
        write_pdf(html, out_html, out_pdf)
    write_json(out_summary, summary)
    log.info("comparison of %d models: %s", len(rows), out_html)
    return summary
