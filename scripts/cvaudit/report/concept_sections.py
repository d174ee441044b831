"""The concepts section (the tcav stage's file): each concept's examples, whether the layer represents it, and per
class its TCAV score beside the random CAVs' with Kim et al.'s test. Only reads."""
from __future__ import annotations


def concepts_section(files: dict) -> dict | None:
    from cvaudit.core.files import read_json
    from cvaudit.report import figures
    if "results" not in files:
        return None
    t = read_json(files["results"])
    concepts = []
    for name, c in t["concepts"].items():
        examples = []
        for p in c["examples"]:
            try:
                examples.append(figures.png_uri(figures.thumbnail(p, 64), 64, 64))
            except OSError:  # moved since the stage ran: the table still stands
                continue
        rows = sorted(c["classes"], key=lambda r: -r["difference"]["value"])
        concepts.append({"name": name, **{k: c.get(k) for k in ("path", "forbidden", "description", "n_images",
                                                               "cav_accuracy", "separable", "reason")},
                         "examples": examples, "classes": rows,
                         "drives": [r["class"] for r in rows if r.get("drives")],
                         "confirmed": [r["class"] for r in rows if r.get("confirmed")]})
    return {"layer": t["layer"], "random_sets": t["random_sets"], "n_random_images": t["n_random_images"],
            "alpha": t["alpha"], "min_cav_accuracy": t["min_cav_accuracy"], "reason": t.get("reason"),
            "random_cav_accuracy": (t.get("random") or {}).get("cav_accuracy"), "n_tests": t.get("n_tests", 0),
            "n_reference": t.get("n_reference", 0),
            "concepts": concepts}


def concepts_summary(section: dict | None) -> dict | None:
    """summary.json's concepts entry: per concept whether it is forbidden and represented, the classes it drives
    (TCAV) and those confirmed by the prediction shift, and per class the scores and the shift."""
    if not section:
        return None
    return {"layer": section["layer"], "random_sets": section["random_sets"], "concepts": {
        c["name"]: {"forbidden": c["forbidden"], "separable": c["separable"],
                    "cav_accuracy": (c["cav_accuracy"] or {}).get("mean"), "drives": c["drives"],
                    "confirmed": c["confirmed"],
                    "scores": {r["class"]: {"tcav": r["mean"], "random": r["random_mean"], "p_adjusted": r["p_adjusted"],
                                            "shift": r["shift"]["value"]} for r in c["classes"]}}
        for c in section["concepts"]}}


def forbidden_concept(r: dict):
    """Over the concepts marked forbidden and the classes whose TCAV score lies above the random CAVs': the largest
    rise in the share of images the model predicts as the class when they carry the concept (the concept's images
    against ordinary test images, Newcombe interval, Bonferroni over the tests). 0 when TCAV finds no class above
    the random CAVs; None when no forbidden concept is named, an estimate without a value when none was scored."""
    from cvaudit.core import stats
    section = (r.get("built") or {}).get("concepts")
    if not section:
        return None
    forbidden = [c for c in section["concepts"] if c["forbidden"]]
    if not forbidden:
        return None
    scored = [(c, row) for c in forbidden for row in c["classes"]]
    if not scored:
        return stats.estimate(None, 0, method="newcombe", note=f"forbidden concept(s) {', '.join(c['name'] for c in forbidden)} "
                              f"not represented at {section['layer']} (or too few images): nothing scored")
    above = [(c, row) for c, row in scored if row["difference"]["value"] > 0]
    if not above:
        return stats.estimate(0.0, max(c["n_images"] for c in forbidden), method="none",
                              note=f"TCAV scores no class above the random CAVs for {', '.join(c['name'] for c in forbidden)}")
    c, row = max(above, key=lambda cr: cr[1]["shift"]["value"])
    tcav = (f"TCAV {row['mean']:.2f} against {row['random_mean']:.2f} for random CAVs, Holm p {row['p_adjusted']:.3g}"
            + ("" if row["drives"] else ", not significant"))
    return {**row["shift"], "note": f"{c['name']} on {row['class']}: {row['shift']['note']}; {tcav}"}
