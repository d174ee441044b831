"""Test-set evaluation, the classic-ML baseline, the fixed audit set later stages explain, and the label-issue
candidates the model's own test probabilities give (confident learning, cvaudit.core.labels)."""
from __future__ import annotations

import csv
import logging
import time

import numpy as np
import torch

from cvaudit import CvauditError
from cvaudit.core import stats
from cvaudit.core.files import atomic_path, read_json, write_json
from cvaudit.core.images import load_rgb
from cvaudit.core.labels import model_label_issues
from cvaudit.core.manifest import manifest_classes, read_manifest
from cvaudit.net.pixel_space import predict_proba, start_stage
from cvaudit.net.transforms import display_transform

log = logging.getLogger("cvaudit.model.evaluate_model")


def classification_metrics(probs: np.ndarray, targets: np.ndarray, class_idx: list[int],
                           class_names: list[str]) -> dict:
    """Accuracy, top-5 (>= 5 outputs), per-class P/R/F1 and a confusion matrix over the dataset's
    classes, with an 'other' column for predictions outside them (e.g. an ImageNet head)."""
    from sklearn.metrics import precision_recall_fscore_support

    preds = probs.argmax(1)
    acc = float((preds == targets).mean())
    top5 = None
    if probs.shape[1] >= 5:
        top5 = float(np.mean([t in row for t, row in zip(targets, np.argsort(-probs, 1)[:, :5])]))
    p, r, f, s = precision_recall_fscore_support(targets, preds, labels=class_idx, zero_division=0)
    pos = {c: i for i, c in enumerate(class_idx)}
    other = any(int(q) not in pos for q in preds)
    cm = np.zeros((len(class_idx), len(class_idx) + int(other)), dtype=int)
    for t, q in zip(targets, preds):
        cm[pos[int(t)], pos.get(int(q), len(class_idx))] += 1
    names = [class_names[c] for c in class_idx]
    return {
        "accuracy": acc,
        "top5_accuracy": top5,
        "macro_f1": float(np.mean(f)),
        "per_class": [{"class": n, "precision": float(a), "recall": float(b), "f1": float(c), "support": int(d)}
                      for n, a, b, c, d in zip(names, p, r, f, s)],
        "confusion": {"rows": names, "columns": names + (["other"] if other else []), "matrix": cm.tolist()},
    }


def choose_audit_set(targets: np.ndarray, correct: np.ndarray, per_class: int, max_images: int,
                     seed: int) -> np.ndarray:
    """Seeded indices: per class up to per_class images, mistakes and correct predictions alternating
    (a class without mistakes gives correct ones, and the other way round). Classes take turns in a
    seeded order, so every class gets one image before any gets a second, and alternate classes start
    with a mistake, so a cap below the number of classes still holds about half mistakes."""
    rng = np.random.default_rng(seed)
    per = []
    for j, c in enumerate(rng.permutation(np.unique(targets))):
        wrong = rng.permutation(np.flatnonzero((targets == c) & ~correct)).tolist()
        right = rng.permutation(np.flatnonzero((targets == c) & correct)).tolist()
        queues = (wrong, right) if j % 2 == 0 else (right, wrong)
        pick: list[int] = []
        while len(pick) < per_class and any(queues):
            for q in queues:
                if q and len(pick) < per_class:
                    pick.append(q.pop(0))
        per.append(pick)
    chosen = []
    for k in range(per_class):
        for pick in per:
            if k < len(pick) and len(chosen) < max_images:
                chosen.append(pick[k])
    return np.array(sorted(chosen), dtype=int)


def worst_mistakes(conf: np.ndarray, correct: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k wrong predictions made with the highest confidence, most confident first."""
    wrong = np.flatnonzero(~correct)
    return wrong[np.argsort(-conf[wrong], kind="stable")][:k]


def baseline_gain(correct: np.ndarray, base: dict | None, seed: int) -> dict:
    """What the model gains over the classic-ML baseline on the same test images: its accuracy minus the
    baseline's, with a paired bootstrap interval and McNemar's p when the baseline's per-image results are
    there (in the same order). None where there is no baseline to compare with."""
    out = {"baseline": None if base is None else {k: v for k, v in base.items() if k != "correct"},
           "gain_over_baseline": None, "gain_over_baseline_ci": None, "mcnemar_p": None}
    if base and base.get("available"):
        out["gain_over_baseline"] = float(np.mean(correct)) - base["accuracy"]
        base_correct = np.asarray(base.get("correct", []), bool)
        if len(base_correct) == len(correct):  # the same test images, in the same order
            out["gain_over_baseline_ci"] = stats.paired_difference(correct.astype(float), base_correct.astype(float),
                                                                   seed=seed)
            out["mcnemar_p"] = stats.mcnemar_p(correct, base_correct)
    return out


# A model that gives one class to this share of the test images (when the class is not that common) has collapsed.
COLLAPSE_SHARE = 0.8


def degenerate(preds: np.ndarray, targets: np.ndarray, class_idx: list[int], class_names: list[str],
               accuracy_ci: dict) -> dict:
    """Is the model degenerate: collapsed onto one class, or at chance (its accuracy interval reaches the
    chance level: 1 / classes, or the commonest class's share if higher)? A degenerate model is named as
    such, and the checks that read its behaviour relative to its accuracy are not scored."""
    n = len(preds)
    pred_share = np.array([(preds == c).mean() for c in class_idx]) if n else np.zeros(len(class_idx))
    true_share = np.array([(targets == c).mean() for c in class_idx]) if n else np.zeros(len(class_idx))
    top = int(np.argmax(pred_share)) if len(class_idx) else 0
    chance = float(max(1 / max(len(class_idx), 1), true_share.max() if n else 0))
    collapsed = bool(n and pred_share[top] >= COLLAPSE_SHARE and true_share[top] < COLLAPSE_SHARE)
    at_chance = bool(n and accuracy_ci.get("ci_low") is not None and accuracy_ci["ci_low"] <= chance)
    why = []
    if collapsed:
        why.append(f"it predicts '{class_names[class_idx[top]]}' for {pred_share[top]:.0%} of the test images "
                   f"(true share {true_share[top]:.0%})")
    if at_chance:
        why.append(f"its accuracy interval [{accuracy_ci['ci_low']:.3f}, {accuracy_ci['ci_high']:.3f}] reaches the "
                   f"chance level {chance:.3f}")
    return {"is": collapsed or at_chance, "collapsed": collapsed, "at_chance": at_chance, "chance": chance,
            "top_class": class_names[class_idx[top]] if len(class_idx) else None,
            "top_share": float(pred_share[top]) if len(class_idx) else None,
            "true_share": float(true_share[top]) if len(class_idx) else None,
            "predicted_classes": int((pred_share > 0).sum()), "why": "; ".join(why)}


def batch_statistics_accuracy(model, rows, spec, device, targets: np.ndarray) -> float | None:
    """Test accuracy with BatchNorm normalising by each batch's own statistics instead of the running
    ones: far above the usual accuracy means the running statistics are stale (too few steps tracked)."""
    import copy
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or len(rows) < 2:
        return None
    probe = copy.deepcopy(model)
    for m in probe.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    try:
        probs = predict_proba(probe, rows, spec, device, batch_size=min(64, len(rows)))
    except ValueError:  # a last batch of one image with BatchNorm1d: no batch statistics to take
        return None
    return float((probs.argmax(1) == targets).mean())


def write_probs(out, probs: np.ndarray, targets: np.ndarray, paths: list[str], class_names: list[str]) -> None:
    """The test probabilities (calibration and later stages read them) and the label-issue candidates confident
    learning finds in them (label_issue_*; label_issues_why says why none were searched; the data audit's
    section shows them)."""
    found = model_label_issues(probs, targets)
    issues = found["issues"] or {"index": np.zeros(0, np.int64), "given": np.zeros(0, np.int64),
                                 "suggested": np.zeros(0, np.int64), "self_confidence": np.zeros(0)}
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, probs=probs.astype(np.float32), targets=targets, paths=np.array(paths),
                            class_names=np.array(class_names), label_issues_why=np.array(found["why"]),
                            label_issues_n=found["n"], **{f"label_issue_{k}": v for k, v in issues.items()})


def evaluate_model(name: str, model_path, manifest, baseline, audit_cfg: dict, seed: int, device: str,
                   threads: int, out_predictions, out_metrics, out_audit, out_probs) -> dict:
    t0 = time.time()
    model, spec, dev = start_stage(model_path, seed, device, threads)
    rows = read_manifest(manifest, "test")
    if not rows:
        raise CvauditError(f"model '{name}': the dataset has no test images; raise config key datasets.*.split.test")
    classes = manifest_classes(manifest)  # from the declared input itself, never a file beside it
    index = {c: i for i, c in enumerate(spec["class_names"])}
    class_idx = [index[c] for c in classes if c in index]
    if len(class_idx) != len(classes):
        missing = [c for c in classes if c not in index]
        raise CvauditError(f"model '{name}' does not know dataset classes {missing[:5]}; with train: false "
                           "the dataset's labels must be names of the model's outputs")
    log.info("%s: predicting %d test images on %s", name, len(rows), dev)
    probs = predict_proba(model, rows, spec, dev)
    targets = np.array([index[r["label"]] for r in rows])
    preds = probs.argmax(1)
    correct = preds == targets
    m = classification_metrics(probs, targets, class_idx, spec["class_names"])

    with atomic_path(out_predictions) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "pred_label", "confidence", "p_true", "correct"])
        for r, t, q, pr in zip(rows, targets, preds, probs):
            w.writerow([r["path"], r["label"], spec["class_names"][q], f"{pr[q]:.6f}", f"{pr[t]:.6f}", int(t == q)])

    write_probs(out_probs, probs, targets, [r["path"] for r in rows], spec["class_names"])

    conf = probs[np.arange(len(preds)), preds]
    m["mistakes"] = [{"path": rows[i]["path"], "label": rows[i]["label"], "pred_label": spec["class_names"][preds[i]],
                      "confidence": float(conf[i])} for i in worst_mistakes(conf, correct, audit_cfg["mistakes"])]

    m["accuracy_ci"] = stats.proportion(int(correct.sum()), len(correct))
    m["degenerate"] = degenerate(preds, targets, class_idx, spec["class_names"], m["accuracy_ci"])
    if m["degenerate"]["is"]:  # the first thing a practitioner checks: stale BatchNorm statistics
        m["degenerate"]["batch_stats_accuracy"] = batch_statistics_accuracy(model, rows, spec, dev, targets)
        log.warning("%s is degenerate: %s", name, m["degenerate"]["why"])
    m.update(baseline_gain(correct, _read_json_or_none(baseline), seed))

    pick = choose_audit_set(targets, correct, audit_cfg["per_class"], audit_cfg["max_images"], seed)
    show = display_transform(spec)
    images = np.stack([show(load_rgb(rows[i]["path"])).permute(1, 2, 0).numpy() for i in pick]).astype(np.uint8)
    with atomic_path(out_audit) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, images=images, targets=targets[pick], preds=preds[pick],
                            confidence=conf[pick], p_true=probs[pick, targets[pick]],
                            paths=np.array([rows[i]["path"] for i in pick]),
                            class_names=np.array(spec["class_names"]))
    m["audit_set"] = {"n": int(len(pick)), "mistakes": int((~correct[pick]).sum()),
                      "classes": int(len(np.unique(targets[pick]))), "of_classes": int(len(class_idx))}
    m.update(model=name, n_test=len(rows), n_audit=len(pick), device=str(dev), seconds=round(time.time() - t0, 2),
             class_names_subset=[spec["class_names"][c] for c in class_idx])
    write_json(out_metrics, m)
    log.info("%s: accuracy %.4f on %d test images (%.1fs)", name, m["accuracy"], len(rows), m["seconds"])
    return m


def _read_json_or_none(path):
    return read_json(path) if path else None
