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
                         "drives": [r["class"] for r in rows if r.get("drives")]})
    return {"layer": t["layer"], "random_sets": t["random_sets"], "n_random_images": t["n_random_images"],
            "alpha": t["alpha"], "min_cav_accuracy": t["min_cav_accuracy"], "reason": t.get("reason"),
            "random_cav_accuracy": (t.get("random") or {}).get("cav_accuracy"), "n_tests": t.get("n_tests", 0),
            "concepts": concepts}


def concepts_summary(section: dict | None) -> dict | None:
    """summary.json's concepts entry: per concept whether it is forbidden and represented, and the classes it drives
    with their scores."""
    if not section:
        return None
    return {"layer": section["layer"], "random_sets": section["random_sets"], "concepts": {
        c["name"]: {"forbidden": c["forbidden"], "separable": c["separable"],
                    "cav_accuracy": (c["cav_accuracy"] or {}).get("mean"), "drives": c["drives"],
                    "scores": {r["class"]: {"tcav": r["mean"], "random": r["random_mean"],
                                            "p_adjusted": r["p_adjusted"]} for r in c["classes"]}}
        for c in section["concepts"]}}


def forbidden_concept(r: dict):
    """The largest rise of a forbidden concept's mean TCAV score over the random CAVs', over the classes, with its
    Welch interval; None when no forbidden concept was scored (none named, or none represented at the layer)."""
    section = (r.get("built") or {}).get("concepts")
    if not section:
        return None
    rows = [(c, row) for c in section["concepts"] if c["forbidden"] for row in c["classes"]]
    if not rows:
        named = [c["name"] for c in section["concepts"] if c["forbidden"]]
        if not named:
            return None
        from cvaudit.core import stats
        return stats.estimate(None, 0, method="welch t", note=f"forbidden concept(s) {', '.join(named)} not "
                              f"represented at {section['layer']} (or too few images): nothing scored")
    c, row = max(rows, key=lambda cr: cr[1]["difference"]["value"])
    verb = "drives" if row["drives"] else "does not significantly drive"
    return {**row["difference"], "note": f"{c['name']} {verb} {row['class']}: TCAV {row['mean']:.2f} against "
                                         f"{row['random_mean']:.2f} for random CAVs (Holm p {row['p_adjusted']:.3g}); "
                                         + row["difference"]["note"]}
