"""Every list behind a verdict or a gallery, as CSV files next to the report (results/{model}/report/evidence/):
the report shows the first few of each and links the file; summary.json counts the rows. Each file is
written whether or not its stage ran (a header alone then), so a reader never mistakes a missing file for an
empty list: the report says which stages ran."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from cvaudit.core.files import atomic_path, load_npz

FILES = {
    "near_duplicates": "Near duplicates and copies across and within splits (hash and copy search; leaks first)",
    "embedding_duplicates": "Near duplicates found in this model's embedding, confirmed on the pixels",
    "label_issues": "Label-issue candidates by a classic classifier (confident learning), most suspicious first",
    "label_issues_by_model": "Label-issue candidates by this model's own test probabilities",
    "quality_outliers": "Image-quality outliers per property",
    "shortcut_suspects": "Clever-Hans suspects and their counterfactual rates",
    "shortcut_clusters": "Every image of every SpRAy cluster, with its share of relevance in the cluster's region",
    "rejected": "Files ingestion left out, with the reason",
}


def _write(path: Path, header: list[str], rows) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow(row)
            n += 1
    return n


def _audit_rows(audit_file) -> dict:
    if not audit_file:
        return {"near_duplicates": [], "label_issues": [], "quality_outliers": []}
    a = load_npz(audit_file)
    paths, splits, y, classes = [str(p) for p in a["paths"]], [str(s) for s in a["splits"]], a["labels"], a["meta"]["classes"]
    n_hash = a["meta"].get("hash_pairs", len(a["pairs"]))  # the hash's pairs come first, the copy search's after
    by_copy = {tuple(sorted((int(i), int(j)))) for i, j in a.get("copy_pairs", [])}
    pairs = [(*(int(v) for v in p), k < n_hash) for k, p in enumerate(a["pairs"])]
    leak = lambda i, j: {splits[i], splits[j]} in ({"test", "train"}, {"test", "val"})  # noqa: E731
    pairs.sort(key=lambda p: not leak(p[0], p[1]))  # leaks first, as the report shows them
    found_by = lambda i, j, h: " and ".join(k for k, ok in (("hash", h), ("copy search", (i, j) in by_copy)) if ok)  # noqa: E731
    out = {"near_duplicates": [(paths[i], splits[i], classes[y[i]], paths[j], splits[j], classes[y[j]], d, int(leak(i, j)),
                                found_by(i, j, h)) for i, j, d, h in pairs]}
    out["label_issues"] = [] if "issue_index" not in a else [
        (paths[i], splits[i], classes[g], classes[s], f"{c:.4f}")
        for i, g, s, c in zip(a["issue_index"], a["issue_given"], a["issue_suggested"], a["issue_self_confidence"])]
    out["quality_outliers"] = [(k, paths[i], splits[i]) for k in a["meta"]["outliers"] for i in a[f"outlier_{k}"]]
    return out


def _embedding_rows(embedding_file) -> list:
    if not embedding_file:
        return []
    e = load_npz(embedding_file)
    if "test_index" not in e:
        return []
    return [(str(e["test_paths"][q]), str(e["ref_paths"][r]), int(m), int(s[0]), int(s[1]), f"{d:.4f}", int(h))
            for q, r, m, s, d, h in zip(e["test_index"], e["ref_index"], e["mirror"], e["shift"], e["difference"], e["by_phash"])]


def _clever_hans_rows(ch_file) -> tuple[list, list]:
    if not ch_file:
        return [], []
    a = load_npz(ch_file)
    m = a["meta"]
    pct = lambda e: ["" if e.get(k) is None else f"{e[k]:.4f}" for k in ("value", "ci_low", "ci_high")]  # noqa: E731
    suspects = [(f["class"], f["kind"], f["shape"], "" if f.get("cluster") is None else f["cluster"], f.get("size", ""),
                 "" if f.get("area") is None else f"{f['area']:.4f}", "" if f.get("effect") is None else f"{f['effect']:.3f}",
                 f["paste"]["n"], *pct(f["paste"]), f["control"], *pct(f["control_paste"]), *pct(f["gain"]),
                 *pct(f["remove"])) for f in m["flagged"]]
    if "member_index" not in a:
        return suspects, []
    paths, n_test = [str(p) for p in a["paths"]], m["n_test"]
    clusters = {}
    for e in m["classes"]:
        for cl in e["clusters"]:
            clusters[cl["row"]] = (e["class"], cl["cluster"], "; ".join(cl.get("tests", [])))
    members = [(*clusters[int(r)][:2], paths[i], "test" if i < n_test else "train", f"{s:.4f}", clusters[int(r)][2])
               for i, r, s in zip(a["member_index"], a["member_row"], a["member_share"])]
    return suspects, members


def write_evidence(out_dir, audit_file=None, embedding_file=None, model_issues: list | None = None, ch_file=None,
                   rejected=None) -> dict:
    """Write every evidence file into out_dir; returns {name: rows} for summary.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    audit = _audit_rows(audit_file)
    counts["near_duplicates"] = _write(out / "near_duplicates.csv", ["path_a", "split_a", "label_a", "path_b", "split_b",
                                                                     "label_b", "hash_distance", "leak", "found_by"], audit["near_duplicates"])
    counts["embedding_duplicates"] = _write(out / "embedding_duplicates.csv", [
        "test_path", "reference_path", "mirrored", "shift_y", "shift_x", "pixel_difference", "also_by_hash"],
        _embedding_rows(embedding_file))
    counts["label_issues"] = _write(out / "label_issues.csv", ["path", "split", "given", "suggested", "self_confidence"],
                                    audit["label_issues"])
    counts["label_issues_by_model"] = _write(out / "label_issues_by_model.csv", ["path", "given", "suggested", "self_confidence"],
                                             [(r["path"], r["given"], r["suggested"], f"{r['confidence']:.4f}")
                                              for r in model_issues or []])
    counts["quality_outliers"] = _write(out / "quality_outliers.csv", ["property", "path", "split"], audit["quality_outliers"])
    suspects, members = _clever_hans_rows(ch_file)
    counts["shortcut_suspects"] = _write(out / "shortcut_suspects.csv", [
        "class", "kind", "shape", "cluster", "cluster_size", "area", "effect", "n", "paste", "paste_low", "paste_high",
        "control", "control_paste", "control_low", "control_high", "gain", "gain_low", "gain_high", "remove",
        "remove_low", "remove_high"], suspects)
    counts["shortcut_clusters"] = _write(out / "shortcut_clusters.csv", [
        "class", "cluster", "path", "split", "relevance_in_region", "suspect"], members)
    if rejected and Path(rejected).exists():
        with atomic_path(out / "rejected.csv") as tmp:
            shutil.copyfile(rejected, tmp)
        with open(out / "rejected.csv", newline="") as f:
            counts["rejected"] = max(sum(1 for _ in csv.reader(f)) - 1, 0)
    else:
        counts["rejected"] = _write(out / "rejected.csv", ["path", "label", "reason"], [])
    return counts


def links(counts: dict) -> list[dict]:
    """The report's list of evidence files: name, relative link, description, rows."""
    return [{"name": k, "href": f"evidence/{k}.csv", "what": FILES[k], "rows": counts.get(k, 0)} for k in FILES]
