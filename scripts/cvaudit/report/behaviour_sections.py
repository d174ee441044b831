"""The report's sections of the behaviour stages (slices, shape and texture, corruptions, shift, layer views),
each built from its stage's output, and their summary.json
entries: slices and groups, shape and texture, common corruptions, what the layers keep."""
from __future__ import annotations

import numpy as np

from cvaudit.report import behaviour_figures


def _where(where: list[dict]) -> str:
    return " and ".join(f"{w['property']} {w['bin']}" for w in where)


def slices_section(sl: dict, names: list[str], shown: int = 12) -> dict:
    """Per-property curves, the weak slices (or the most suspicious tested ones), and per group column
    its table and chart."""
    ws = sl["weak_slices"]
    rows = [{**s, "label": _where(s["where"])} for s in ws["slices"][:shown]]
    groups = {}
    for col, g in sl["groups"].items():
        label_names = [names[i] if 0 <= i < len(names) else str(i) for i in g["labels"]]
        groups[col] = {**g, "chart": behaviour_figures.group_bars(g["groups"], f"accuracy per {col}"),
                       "label_names": label_names}
    return {"n": sl["n"], "accuracy": sl["accuracy"], "weak": ws, "rows": rows,
            "worst_label": _where(ws["worst"]["where"]) if ws["worst"] else None,
            "constant": {k: v["value"] for k, v in sl["properties"].items() if v["constant"]},
            "descriptions": sl["descriptions"], "options": sl["options"],
            "curves": behaviour_figures.slice_curves(sl["properties"], sl["accuracy"]["value"]), "groups": groups,
            "error_clusters": error_clusters_section(sl.get("error_clusters"))}


def error_clusters_section(ec: dict | None, shown: int = 3) -> dict | None:
    """The flagged error clusters (or, with none flagged, the `shown` most suspicious), each with its images."""
    if not ec:
        return None
    from cvaudit.report import figures
    rows = [c for c in ec["clusters"] if c["flagged"]] or ec["clusters"][:shown]
    return {**{k: v for k, v in ec.items() if k != "clusters"},
            "rows": [{**c, "thumbs": [{**im, "image": figures.png_uri(figures.thumbnail(im["path"]), 48)}
                                      for im in c["images"]],
                      "nearest": [figures.png_uri(figures.thumbnail(p), 48) for p in c.get("nearest_training", [])]}
                     for c in rows]}


def slices_summary(sl: dict | None) -> dict | None:
    if not sl:
        return None
    ws = sl["weak_slices"]
    return {"n": sl["n"], "n_tested": ws["n_tested"], "weak": ws["weak"], "alpha": ws["alpha"],
            "weak_slices": [{"where": _where(s["where"]), "n": s["n"], "accuracy": s["accuracy"],
                             "rest_accuracy": s["rest_accuracy"], "p_adjusted": s["p_adjusted"]}
                            for s in ws["slices"] if s["weak"]],
            "worst_gap": ws["worst"] and {**{k: ws["worst"][k] for k in ("value", "n", "ci_low", "ci_high", "method", "note")},
                                          "where": _where(ws["worst"]["where"])},
            "groups": {col: {"groups": [{k: g[k] for k in ("value", "n", "accuracy", "ece", "confidence")} for g in v["groups"]],
                             "gap": v["gap"]} for col, v in sl["groups"].items()},
            "error_clusters": None if not sl.get("error_clusters") else {
                **{k: sl["error_clusters"].get(k) for k in ("n", "errors", "k", "n_tested", "flagged", "note")},
                "flagged_clusters": [{k: c[k] for k in ("n", "errors", "accuracy", "expected_accuracy", "p_adjusted",
                                                         "classes", "mistakes", "properties")}
                                     for c in sl["error_clusters"]["clusters"] if c["flagged"]]}}


def shape_texture_section(st: dict) -> dict:
    """Shape bias beside the paper's reference numbers, accuracy per shuffle grid and texture removal,
    and cue-conflict examples with the decision."""
    from cvaudit.report import figures
    meta = st["meta"]
    names = meta["class_names"]
    examples = []
    for i in range(len(st["conflict_images"])):
        s, t, p = int(st["shape_class"][i]), int(st["texture_class"][i]), int(st["conflict_pred"][i])
        examples.append({"shape": figures.png_uri(st["shape_images"][i], 80, 112),
                         "texture": figures.png_uri(st["texture_images"][i], 80, 112),
                         "conflict": figures.png_uri(st["conflict_images"][i], 80, 112),
                         "shape_class": names[s], "texture_class": names[t], "pred": names[p] if 0 <= p < len(names) else str(p),
                         "decision": "shape" if p == s else "texture" if p == t else "neither"})
    kinds = [k for k in ("edges", "silhouette", "smooth") if k in st] + [k for k in st if k.startswith("grid_")]
    stimuli = [{"kind": k.replace("grid_", "shuffled, grid "), "images": [figures.png_uri(a, 64, 96) for a in st[k]]}
               for k in kinds]
    return {**meta, "examples": examples, "stimuli": stimuli,
            "bars": behaviour_figures.shape_texture_bars(meta)}


def shape_texture_summary(st: dict | None) -> dict | None:
    if not st:
        return None
    m = st["meta"]
    return {"shape_bias": m["cue_conflict"]["shape_bias"],
            **{k: m["cue_conflict"][k] for k in ("n", "shape", "texture", "neither", "with_figure")},
            "clean_accuracy": m["clean"], "shuffle_accuracy": m["shuffle"], "texture_removed_accuracy": m["removal"],
            "reference": m["reference"]}


def corruptions_section(co: dict) -> dict:
    """Curves per category, CE per corruption against the reference, and one image under every corruption
    and severity."""
    from cvaudit.report import figures
    meta, errors, ex = co["meta"], co["errors"], co["arrays"]["examples"]
    rows = []
    for i, name in enumerate(meta["corruptions"]):
        rows.append({"name": name, "category": meta["categories"][i], "accuracy": meta["accuracy"][i],
                     "ce": errors["ce"][i] if errors["ce"] else None,
                     "images": [figures.png_uri(ex[i, j], 48, 80) for j in range(ex.shape[1])] if len(ex) else []})
    return {**meta, "errors": errors, "rows": rows, "curves": behaviour_figures.corruption_curves(meta)}


def corruptions_summary(co: dict | None) -> dict | None:
    if not co:
        return None
    m, e = co["meta"], co["errors"]
    return {"n": m["n"], "table": m["table"], "severities": m["severities"], "clean_accuracy": m["clean"],
            "accuracy": {c: m["accuracy"][i] for i, c in enumerate(m["corruptions"])},
            "clean_ece": m["clean_ece"], "ece_by_severity": dict(zip(map(str, m["severities"]), m["ece_by_severity"])),
            "msp_auroc_by_severity": dict(zip(map(str, m["severities"]), m.get("msp_auroc_by_severity") or [])),
            "reference": e["reference"], "mce": e["mce"], "relative_mce": e["relative_mce"],
            "mean_error": e["mean_error"], "ce": dict(zip(m["corruptions"], e["ce"])) if e["ce"] else None,
            "note": e["note"]}


def layers_section(files: dict) -> dict | None:
    """Feature inversions (rows: the image, then each layer's reconstruction) and effective receptive fields,
    from the layer_views stage's file (files["views"]; None when its stage failed)."""
    from cvaudit.core.files import load_npz
    from cvaudit.report import figures
    if "views" not in files:
        return None
    v = load_npz(files["views"])
    meta = v["meta"]
    inv = None
    if meta["inversion"]:
        rows = []
        for i, img in enumerate(v["originals"]):
            rows.append({"original": figures.png_uri(img, 80, 112),
                         "layers": [{"image": figures.png_uri(v["inversions"][j, i], 80, 112),
                                     "distance": meta["inversion"]["distance"][j][i]} for j in range(len(meta["layers"]))]})
        inv = {**meta["inversion"], "rows": rows}
    erf = []
    for j, name in enumerate(meta["layers"]):
        e = meta["erf"].get(name)
        if e is None:
            continue
        row = {"layer": name, **e}
        if f"erf_{j}" in v:
            m = v[f"erf_{j}"]
            row["map"] = figures.png_uri((255 * m / max(float(m.max()), 1e-12)).astype(np.uint8), 80, 112)
        erf.append(row)
    return {"layers": meta["layers"], "inversion": inv, "erf": erf, "input_size": meta["input_size"],
            "erf_images": max((e.get("images", 0) for e in erf), default=0)}


def layers_summary(layers: dict | None) -> dict | None:
    if not layers:
        return None
    inv = layers["inversion"]
    return {"layers": layers["layers"],
            "inversion_distance": None if not inv else dict(zip(layers["layers"], inv["mean_distance"])),
            "erf": {e["layer"]: {k: e.get(k) for k in ("r50", "r90", "theoretical", "reason")} for e in layers["erf"]}}


def conformal_summary(conf: dict | None) -> dict | None:
    """summary.json's conformal entry: the promise, the test coverage with its interval, set sizes, the worst class."""
    if not conf or not conf.get("coverage"):
        return None
    cov = conf["coverage"]
    return {"level": conf["level"], "score": conf["score"], "n_calibration": conf["n_calibration"], "n": conf["n"],
            "coverage": cov["value"], "ci_low": cov["ci_low"], "ci_high": cov["ci_high"], "mean_size": conf["mean_size"],
            "worst_class": conf["worst_class"]}


def selective_summary(sel: dict | None) -> dict | None:
    """summary.json's selective entry: AURC with its interval and bounds, accuracy at 90% and 80% coverage."""
    if not sel:
        return None
    at = {round(a["coverage"] * 100): a["accuracy"]["value"] for a in sel["at"]}
    return {"n": sel["n"], "aurc": sel["aurc"]["value"], "ci_low": sel["aurc"]["ci_low"], "ci_high": sel["aurc"]["ci_high"],
            "aurc_optimal": sel["aurc_optimal"], "aurc_uninformed": sel["aurc_uninformed"],
            "accuracy_at_90": at[90], "accuracy_at_80": at[80]}
