"""Why a model is degenerate: the checks a practitioner runs on a model that collapsed onto one class or
sits at chance, each with its measured number and what to try. The report shows them in place of scores
(evaluate.degenerate decides; checks.run_checks leaves the other verdicts unscored)."""
from __future__ import annotations


def diagnosis(r: dict, model_cfg: dict) -> dict | None:
    """{why, rows: [{check, measured, try}]} for a degenerate model, else None. r: report.collect's dict."""
    deg = (r["eval"].get("degenerate") or {})
    if not deg.get("is"):
        return None
    ev, train, history = r["eval"], r["train"], r["history"] or []
    rows = []
    if deg.get("top_share") is not None:
        rows.append({"check": "Collapse",
                     "measured": f"'{deg['top_class']}' predicted for {deg['top_share']:.0%} of the test images (its true "
                                 f"share {deg['true_share']:.0%}); {deg['predicted_classes']} of "
                                 f"{len(ev['class_names_subset'])} classes predicted at all",
                     "try": "look at the checks below; a model that predicts one class has learned the prior, not the images"})
    bsa = deg.get("batch_stats_accuracy")
    if bsa is not None:
        stale = bsa > ev["accuracy"] + 0.1
        rows.append({"check": "BatchNorm statistics",
                     "measured": f"test accuracy {bsa:.3f} with each batch's own statistics vs {ev['accuracy']:.3f} "
                                 "with the running statistics the model keeps",
                     "try": ("the running statistics are stale (too few training steps tracked them): recompute them "
                             "over the training set, train longer or on more images" if stale else
                             "no sign of stale statistics: the cause is elsewhere")})
    if train.get("trained"):
        best, run = train.get("best_epoch"), train.get("epochs_run")
        early = best is not None and best <= 2
        rows.append({"check": "Early stopping",
                     "measured": f"weights of epoch {best} of {run} kept ({train.get('best_phase')} phase), by the "
                                 "best validation loss",
                     "try": ("an early epoch was kept: the validation loss never improved after it; raise patience, "
                             "lower the learning rate or check the validation split" if early else
                             "the kept epoch is not an early one")})
        tcfg = model_cfg.get("train") or {}
        lrs = ", ".join(f"{k} {tcfg[k]:g}" for k in ("lr", "finetune_lr") if isinstance(tcfg.get(k), (int, float)))
        rows.append({"check": "Learning rate", "measured": lrs or "—",
                     "try": "too high a rate diverges or collapses, too low barely moves: try a tenth and ten times it"})
        if history:
            last = history[-1]
            rows.append({"check": "Training curve",
                         "measured": f"last epoch: train accuracy {last['train_acc']:.3f}, validation accuracy "
                                     f"{last['val_acc']:.3f} (chance {deg['chance']:.3f})",
                         "try": ("the training accuracy is near chance too: the model did not learn (labels, learning "
                                 "rate, input normalisation)" if last["train_acc"] <= deg["chance"] + 0.1 else
                                 "it fits the training images but not the others: over-fitting or a train/test "
                                 "mismatch; more images or augmentation")})
    counts = [c.get("train", 0) for c in (r["dataset"].get("counts") or {}).values()]
    if counts and max(counts) > 0:
        ratio = min(counts) / max(counts)
        rows.append({"check": "Class balance",
                     "measured": f"{min(counts)} to {max(counts)} training images per class (ratio {ratio:.2f})",
                     "try": ("strongly imbalanced: resample or weight the classes" if ratio < 0.2 else
                             "balanced enough not to explain a collapse")})
    return {"why": deg["why"], "chance": deg["chance"], "rows": rows}
