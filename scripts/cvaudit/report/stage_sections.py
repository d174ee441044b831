"""The report's sections on what the layers see and on behaviour under change, each built from its stage's
outputs: representations, units (activations, top images, receptive fields, ascent), robustness."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cvaudit import CvauditError
from cvaudit.core.files import intact, load_npz, read_json
from cvaudit.report import figures


def represent_section(path, names: list[str], queries: int) -> dict:
    """Embedding space figures, k-NN / silhouette, neighbour retrieval (mistakes first), layer CKA."""

    r = load_npz(path)
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


def _upscale(maps: np.ndarray, at_least: int = 24) -> np.ndarray:
    k = max(1, -(-at_least // maps.shape[-2]))
    return maps.repeat(k, -2).repeat(k, -1) if maps.ndim == 3 else maps.repeat(k, 1).repeat(k, 2)


def units_section(units_path, ascent_path=None) -> dict:
    """Activation maps per stage with sparsity and dead channels, first-layer filters, per channel
    its gradient-ascent image and top test images with the patch that fired, class visualisations."""

    u = load_npz(units_path)
    if "views" not in u:  # written before the stage saved the images it picked
        with intact(units_path):
            raise KeyError("views")
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
    for c in u["channels"]:
        c = int(c)
        tops = []
        for k in np.flatnonzero(u["pick_channel"] == c):
            path = str(u["paths"][k])
            view = u["views"][u["pick_view"][k]]  # the image as the model sees it, saved by the stage
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


def compare_section(path) -> dict:
    c = read_json(path)
    return {**c, "cka_fig": figures.agreement_heatmap(c["models"], c["cka"], label="linear CKA", vmin=0)}


def collect_robust(grouped: dict[str, dict[str, str]], settings: dict) -> dict | None:
    """Calibration, invariance curves and adversarial results, as the checks and the report read them
    (grouped: the report's inputs by section, cvaudit.sections)."""
    inv = {f: read_json(v) for f, v in grouped.get("invariance", {}).items()}
    adv = {a: load_npz(v) for a, v in grouped.get("adversarial", {}).items()}
    cal, shuffled = grouped.get("calibration", {}), grouped.get("shuffled_labels", {})
    sl, st, co = grouped.get("slices", {}), grouped.get("shape_texture", {}), grouped.get("corruptions", {})
    sh = grouped.get("shift", {})
    if not inv and not adv and not cal and not shuffled and not sl and not st and not co and not sh:
        return None
    rob = settings["robustness"]
    return {"invariance": inv, "adversarial": {a: v["meta"] for a, v in adv.items()}, "adversarial_arrays": adv,
            "calibration": read_json(cal["calibration"]) if cal else None,
            "shuffled_labels": read_json(shuffled["curves"]) if shuffled else None,
            "slices": read_json(sl["slices"]) if sl else None,
            "shape_texture": load_npz(st["results"]) if st else None,
            "corruptions": _corruptions(co) if "results" in co else None,
            "shift": read_json(sh["shift"]) if sh else None,
            "check_angle": rob["check_angle"], "check_epsilon": rob["adversarial"]["check_epsilon"]}


def _corruptions(files: dict) -> dict:
    """The corruptions stage's arrays, and its corruption errors against the reference."""
    own = load_npz(files["results"])
    if "errors" not in own["meta"]:
        raise CvauditError(f"{files['results']} was written without its corruption errors; rebuild it: "
                           f"snakemake --forcerun {files['results']} (with your usual --configfile)")
    return {"arrays": own, "meta": own["meta"], "errors": own["meta"]["errors"]}


def robust_section(rob: dict, names: list[str]) -> dict:
    from cvaudit.report.behaviour_figures import risk_coverage
    from cvaudit.report.behaviour_sections import corruptions_section, shape_texture_section, slices_section
    out = {"calibration": rob["calibration"], "invariance": rob["invariance"], "adversarial": rob["adversarial"],
           "shuffled_labels": rob["shuffled_labels"],
           "slices": slices_section(rob["slices"], names) if rob.get("slices") else None,
           "shape_texture": shape_texture_section(rob["shape_texture"]) if rob.get("shape_texture") else None,
           "corruptions": corruptions_section(rob["corruptions"]) if rob.get("corruptions") else None,
           "shift": rob.get("shift")}
    out["shuffled_labels_fig"] = figures.memorisation_curves(rob["shuffled_labels"]) if rob["shuffled_labels"] else None
    cal = rob["calibration"]
    out["reliability"] = figures.reliability_diagram(cal["before"], cal["after"], cal["temperature"]) if cal else None
    out["risk_coverage"] = risk_coverage(cal["selective"]) if cal and cal.get("selective") else None
    out["conformal_examples"] = [{**e, "image": figures.png_uri(figures.thumbnail(e["path"]), 64)}
                                 for e in ((cal or {}).get("conformal") or {}).get("examples", [])]
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


def data_audit_section(path, examples: int, probs_path=None, embedding_path=None) -> dict:
    """The data audit's findings with examples: near-duplicate pairs (leaks across splits first), label-issue
    candidates (given against suggested label), the candidates the model's own test probabilities give, quality
    outliers per property, and the near duplicates the model's embedding found (what the pHash missed first)."""
    a = load_npz(path)
    meta, paths, splits, y = a["meta"], [str(p) for p in a["paths"]], a["splits"], a["labels"]
    classes = meta["classes"]
    thumb = lambda i: figures.png_uri(figures.thumbnail(paths[i]), 64)  # noqa: E731
    pairs = a["pairs"]
    crossing = [k for k, (i, j, _) in enumerate(pairs) if splits[i] != splits[j]]
    order = crossing + [k for k in range(len(pairs)) if splits[pairs[k][0]] == splits[pairs[k][1]]]
    duplicates = [{"a": thumb(int(i)), "b": thumb(int(j)), "splits": f"{splits[i]} · {splits[j]}",
                   "labels": f"{classes[y[i]]} · {classes[y[j]]}", "distance": int(d),
                   "leak": {str(splits[i]), str(splits[j])} in ({"test", "train"}, {"test", "val"})}
                  for i, j, d in (pairs[k] for k in order[:examples])]
    issues = [] if "issue_index" not in a else [
        {"image": thumb(int(i)), "given": classes[g], "suggested": classes[s], "confidence": float(c), "split": str(splits[i])}
        for i, g, s, c in list(zip(a["issue_index"], a["issue_given"], a["issue_suggested"], a["issue_self_confidence"]))[:examples]]
    outliers = {k: [{"image": thumb(int(i)), "split": str(splits[i])} for i in a[f"outlier_{k}"][:examples]]
                for k in meta["outliers"]}
    by_model = None
    if probs_path:  # the evaluation's confident learning on the model's own test probabilities
        with intact(probs_path), np.load(probs_path, allow_pickle=False) as z:
            why, n = str(z["label_issues_why"]), int(z["label_issues_n"])
            f = {k: z[f"label_issue_{k}"] for k in ("index", "given", "suggested", "self_confidence")}
            test_paths, names = [str(p) for p in z["paths"]], [str(c) for c in z["class_names"]]
        by_model = {"n": n, "why": why, "count": None, "examples": []}
        if not why:
            by_model["count"] = int(len(f["index"]))
            by_model["all"] = [{"path": test_paths[i], "given": names[g], "suggested": names[s], "confidence": float(c)}
                               for i, g, s, c in zip(f["index"], f["given"], f["suggested"], f["self_confidence"])]
            by_model["examples"] = [{**e, "image": figures.png_uri(figures.thumbnail(e["path"]), 64)}
                                    for e in by_model["all"][:examples]]
    embedding = None if embedding_path is None else embedding_pairs(embedding_path, paths, y, splits, classes, examples)
    return {"meta": meta, "duplicates": duplicates, "issues": issues, "outliers": outliers, "by_model": by_model,
            "embedding": embedding}


def embedding_pairs(path, paths: list[str], y, splits, classes: list[str], examples: int) -> dict:
    """The embedding_duplicates stage's findings, its pairs as thumbnails (test image, then its copy, the copy
    mirrored and shifted as the pixel check matched it), with labels and splits from the data audit's table."""
    e = load_npz(path)
    where = {p: i for i, p in enumerate(paths)}
    pairs = []
    for k in range(min(examples, len(e.get("test_index", [])))):
        a, b = str(e["test_paths"][e["test_index"][k]]), str(e["ref_paths"][e["ref_index"][k]])
        ia, ib = where.get(a), where.get(b)
        dy, dx = (int(v) for v in e["shift"][k])
        pairs.append({"a": figures.png_uri(figures.thumbnail(a), 64), "b": figures.png_uri(figures.thumbnail(b), 64),
                      "splits": f"test · {splits[ib] if ib is not None else '?'}",
                      "labels": " · ".join(classes[y[i]] if i is not None else "?" for i in (ia, ib)),
                      "how": ", ".join(filter(None, ["mirrored" if e["mirror"][k] else "",
                                                     f"shifted {dy:+d}, {dx:+d} px" if dy or dx else ""])) or "as is",
                      "difference": float(e["difference"][k]), "by_phash": bool(e["by_phash"][k])})
    return {"meta": e["meta"], "pairs": pairs}


def embedding_summary(embedding: dict | None) -> dict | None:
    """summary.json's data_audit.embedding_duplicates: what the model's embedding found (null: not run)."""
    if embedding is None:
        return None
    m = embedding["meta"]
    return {k: m.get(k) for k in ("n_test", "n_reference", "reference_total", "neighbors", "pairs", "new_pairs",
                                  "leaked", "leaked_only_by_embedding", "leaked_share", "why")}


def clever_hans_section(path) -> dict:
    """SpRAy's clusters per class (mean map over the members' mean image, the compact region boxed; member
    thumbnails) and each tested suspect's counterfactual evidence (before and after the paste or shift, before
    and after the removal), the region outlined."""
    from cvaudit.explain.spray import box_of, pixel_mask

    a = load_npz(path)
    meta = a["meta"]
    names = meta["class_names"]
    thumbs = a["cluster_thumbs"]
    rows = []
    for e in meta["classes"]:
        clusters = []
        for cl in e["clusters"]:
            t = thumbs[cl["row"]][:cl["n_thumbs"]]
            base = t.astype(np.float32).mean(0).astype(np.uint8)
            h, w = base.shape[:2]
            up = np.asarray(Image.fromarray(a["cluster_maps"][cl["row"]].astype(np.float32), "F").resize((w, h), Image.NEAREST))
            region = np.array(cl["region"], bool)
            tile = figures.draw_box(figures.overlay(base, up), box_of(region, h, w), width=max(1, h // 56))
            clusters.append({**cl, "map": figures.png_uri(tile, 96), "thumbs": [figures.png_uri(im, 48) for im in t]})
        rows.append({**e, "clusters": clusters})
    evidence = []
    for f in meta.get("flagged", []):
        ev = a["evidence"][f["evidence_row"]]  # rows: before and after the paste, before and after the removal
        h, w = ev.shape[2:4]
        mask = pixel_mask(np.array(f["region"], bool), h, w) if f["kind"] == "region" else None
        show = (lambda im: figures.png_uri(figures.outline_mask(im, mask), 64)) if mask is not None \
            else (lambda im: figures.png_uri(im, 64))
        evidence.append({"f": f, **{kind: [{"before": show(ev[row, i]), "after": show(ev[row + 1, i]), "pred": names[p]}
                                           for i, p in enumerate(f["evidence_preds"][kind])]
                                    for kind, row in (("paste", 0), ("remove", 2))}})
    return {"meta": meta, "rows": rows, "evidence": evidence}
