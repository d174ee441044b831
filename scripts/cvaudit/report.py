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
from .data import read_dataset_info, read_manifest
from .evaluate import load_audit_set
from .explain import load_maps
from .io import atomic_path, read_json, write_json, write_text
from .train import read_history

log = logging.getLogger("cvaudit.report")
PACKAGES = ["torch", "torchvision", "timm", "captum", "scikit-learn", "numpy", "snakemake", "jinja2", "weasyprint"]
SUMMARY_VERSION = 1


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


def _gallery(audit: dict, maps: dict) -> list[dict]:
    """Audit images with their map for the predicted class (and the true class where they differ),
    on one colour scale per image pair so the two maps are comparable."""
    names = audit["class_names"]
    items = []
    for i, img in enumerate(audit["images"]):
        mp, mt = maps["maps_pred"][i], maps["maps_true"][i]
        vmax = float(np.nanmax([np.nanmax(mp), np.nanmax(mt) if not np.all(np.isnan(mt)) else 0]))
        item = {"image": figures.png_uri(img), "true": str(names[audit["targets"][i]]),
                "pred": str(names[audit["preds"][i]]), "confidence": float(audit["confidence"][i]),
                "correct": bool(audit["targets"][i] == audit["preds"][i]),
                "path": Path(str(audit["paths"][i])).name,
                "pred_map": figures.png_uri(figures.overlay(img, mp, vmax)), "true_map": None}
        if not np.all(np.isnan(mt)):
            item["true_map"] = figures.png_uri(figures.overlay(img, mt, vmax))
        items.append(item)
    return items


def collect(model: str, inputs: dict, methods: list[str]) -> dict:
    """Everything the report shows, read from the stage outputs of this run."""
    r = {"model": model,
         "dataset": read_dataset_info(inputs["manifest"]),
         "train": read_json(inputs["train_metrics"]),
         "history": read_history(inputs["history"]),
         "eval": read_json(inputs["eval_metrics"]),
         "explain": {}}
    with open(Path(inputs["manifest"]).parent / "rejected.csv", newline="") as f:
        r["rejected"] = list(csv.DictReader(f))
    for m in methods:
        r["explain"][m] = load_maps(inputs[m])
    return r


def render_report(model: str, inputs: dict, model_cfg: dict, dataset_cfg: dict, settings: dict,
                  template: str | Path, css: str | Path, out_html, out_summary, out_pdf=None) -> dict:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    r = collect(model, inputs, settings["explain"]["methods"])
    verdicts = run_checks(r, settings["verdicts"])
    status = overall(verdicts)
    versions = package_versions()
    audit = load_audit_set(inputs["audit_set"])
    galleries = []
    for m, maps in r["explain"].items():
        meta = maps["meta"]
        g = {"method": m, "label": meta["label"], "reads": meta["reads"], "applicable": meta["applicable"],
             "reason": meta["reason"], "layer": meta.get("layer"), "items": []}
        if meta["applicable"]:
            g["items"] = _gallery(audit, maps)
        galleries.append(g)
    ev = r["eval"]
    run_seconds = {"train": r["train"].get("seconds"), "evaluate": ev.get("seconds"),
                   **{f"explain: {m}": r["explain"][m]["meta"].get("seconds") for m in r["explain"]}}
    summary = {
        "summary_version": SUMMARY_VERSION,
        "model": model,
        "dataset": r["dataset"]["name"],
        "status": status,
        "verdicts": verdicts,
        "metrics": {"accuracy": ev["accuracy"], "top5_accuracy": ev["top5_accuracy"], "macro_f1": ev["macro_f1"],
                    "n_test": ev["n_test"],
                    "baseline_accuracy": (ev["baseline"] or {}).get("accuracy"),
                    "gain_over_baseline": ev["gain_over_baseline"]},
        "provenance": {"arch": model_cfg["arch"], "weights": model_cfg["weights"], "seed": settings["seed"],
                       "device": device_description(r["train"]["device"]),
                       "manifest_sha256": r["dataset"]["manifest_sha256"], "packages": versions,
                       "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "stage_seconds": run_seconds},
    }
    env = Environment(loader=FileSystemLoader(str(Path(template).parent)), undefined=StrictUndefined,
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["fmt"] = _fmt
    env.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.1f}%"
    html = env.get_template(Path(template).name).render(
        title=settings["report"]["title"], model=model, r=r, ev=ev, verdicts=verdicts, status=status,
        summary=summary, model_cfg=model_cfg, dataset_cfg=dataset_cfg, settings=settings, galleries=galleries,
        css=Path(css).read_text(),
        samples=_sample_grid(inputs["manifest"], r["dataset"]["classes"]),
        curves=figures.learning_curves(r["history"]) if r["history"] else None,
        confusion=figures.confusion(**{k: ev["confusion"][k] for k in ("rows", "columns", "matrix")}),
        mistakes=[{**m, "image": figures.png_uri(figures.thumbnail(m["path"]), 64), "file": Path(m["path"]).name}
                  for m in ev["mistakes"]],
        colourbar=figures.colourbar(),
    )
    write_text(out_html, html)
    if out_pdf:
        from weasyprint import HTML
        with atomic_path(out_pdf) as tmp:
            HTML(string=html, base_url=str(Path(out_html).parent)).write_pdf(str(tmp))
    write_json(out_summary, summary)
    log.info("%s: report %s (status %s)", model, out_html, status)
    return summary
