"""Figures of the behaviour sections (slices and groups, corruptions, shape and texture): SVG data URIs
drawn the way cvaudit.report.figures draws the rest."""
from __future__ import annotations

import numpy as np

from cvaudit.report.figures import fig_uri, plt


def _errorbars(ax, x, est: list[dict], **kw):
    v = np.array([e["value"] if e["value"] is not None else np.nan for e in est], float)
    lo = np.array([e["ci_low"] if e["ci_low"] is not None else np.nan for e in est], float)
    hi = np.array([e["ci_high"] if e["ci_high"] is not None else np.nan for e in est], float)
    # clipped at 0: a Wilson bound at k = n is 1 - 1e-16, below the value 1.0 (matplotlib refuses negative bars)
    yerr = [np.clip(np.nan_to_num(v - lo), 0, None), np.clip(np.nan_to_num(hi - v), 0, None)]
    ax.errorbar(x, v, yerr=yerr, fmt="o-", ms=3, capsize=2, lw=1, **kw)


def slice_curves(properties: dict, overall: float) -> str | None:
    """One panel per (non-constant) property: accuracy per bin with its Wilson interval, the mean
    confidence per bin (dashed), and the overall accuracy (grey)."""
    shown = {k: v for k, v in properties.items() if not v["constant"]}
    if not shown:
        return None
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.8 * rows), squeeze=False, sharey=True)
    for ax, (name, p) in zip(axes.flat, shown.items()):
        x = np.arange(len(p["bins"]))
        _errorbars(ax, x, [b["accuracy"] for b in p["bins"]], label="accuracy")
        ax.plot(x, [b["confidence"] for b in p["bins"]], "s--", ms=2.5, lw=0.8, label="confidence")
        ax.axhline(overall, color="#8c959f", lw=0.6)
        ax.set_xticks(x, [f"{b['lo']:.2g}" if b["lo"] != b["hi"] else f"{b['lo']:g}" for b in p["bins"]], fontsize=6.5)
        ax.set_title(name, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6.5, frameon=False, loc="lower left")
    fig.supxlabel("bin (lower edge)", fontsize=7)
    fig.tight_layout()
    return fig_uri(fig)


def group_bars(groups: list[dict], title: str) -> str:
    """Accuracy per group with its Wilson interval."""
    fig, ax = plt.subplots(figsize=(min(7.2, 1.2 + 0.6 * len(groups)), 2.2))
    x = np.arange(len(groups))
    _errorbars(ax, x, [g["accuracy"] for g in groups])
    ax.set_xticks(x, [f"{g['value']}\n(n={g['n']})" for g in groups], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig_uri(fig)


def shape_texture_bars(meta: dict) -> str:
    """Accuracy (Wilson interval) on the clean images, per patch-shuffling grid and per texture removal, and
    the shape bias beside Geirhos et al.'s reference numbers."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(7.2, 2.4), gridspec_kw={"width_ratios": [3, 1.3]})
    items = [("clean", meta["clean"])] + [(f"grid {g}", v) for g, v in meta["shuffle"].items() if g != "1"] + \
        [(k, v) for k, v in meta["removal"].items()]
    x = np.arange(len(items))
    _errorbars(ax, x, [v for _, v in items])
    ax.set_xticks(x, [k for k, _ in items], fontsize=7, rotation=30)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("shape destroyed (grids) | texture removed (right)", fontsize=8)
    sb = meta["cue_conflict"]["shape_bias"]
    refs = list(meta["reference"].items())  # empty where they are not comparable (shape_texture.reference_incomparable)
    bx.barh(range(len(refs)), [v for _, v in refs], color="#d0d7de")
    for i, (k, _) in enumerate(refs):
        bx.text(0.02, i, k.split(" (")[0], va="center", fontsize=6.5)
    if sb["value"] is not None:
        bx.axvline(sb["value"], color="#0969da", lw=1.5)
        if sb["ci_low"] is not None:
            bx.axvspan(sb["ci_low"], sb["ci_high"], color="#0969da", alpha=0.15)
    bx.set_xlim(0, 1)
    bx.set_yticks([])
    bx.set_title("shape bias (blue: this model)", fontsize=8)
    fig.tight_layout()
    return fig_uri(fig)


def corruption_curves(meta: dict) -> str:
    """Accuracy against severity, one panel per category (noise, blur, weather, digital), one line per
    corruption, the clean accuracy in grey; and the ECE per severity (interval bars) beside the clean ECE."""
    cats = list(dict.fromkeys(meta["categories"]))
    fig, axes = plt.subplots(1, len(cats) + 1, figsize=(1.75 * (len(cats) + 1), 2.1), squeeze=False)
    sev = meta["severities"]
    for ax, cat in zip(axes[0], cats):
        for name, c, acc in zip(meta["corruptions"], meta["categories"], meta["accuracy"]):
            if c == cat:
                ax.plot(sev, [a["value"] for a in acc], "o-", ms=2.5, lw=1, label=name.replace("_", " "))
        ax.axhline(meta["clean"]["value"], color="#8c959f", lw=0.8)
        ax.set_ylim(0, 1.02)
        ax.set_xticks(sev)
        ax.set_title(cat, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=5.5, frameon=False, loc="lower left")
    ex = axes[0][-1]
    _errorbars(ex, np.asarray(sev, float), meta["ece_by_severity"], label="corrupted")
    ce = meta["clean_ece"]
    ex.axhline(ce["value"], color="#8c959f", lw=0.8)
    if ce["ci_low"] is not None:
        ex.axhspan(ce["ci_low"], ce["ci_high"], color="#8c959f", alpha=0.15)
    ex.set_xticks(sev)
    ex.set_ylim(0, None)
    ex.set_title("ECE (grey: clean)", fontsize=8)
    ex.tick_params(labelsize=7)
    fig.supxlabel("severity", fontsize=7)
    axes[0][0].set_ylabel("accuracy", fontsize=8)
    fig.tight_layout()
    return fig_uri(fig)


def risk_coverage(sel: dict) -> str:
    """The error rate among the most confident images kept, against the share kept (selective prediction), with
    the error rate of a confidence that says nothing (grey) and the lowest the same errors allow (dotted)."""
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    cov = np.asarray(sel["curve"]["coverage"])
    ax.plot(cov, sel["curve"]["risk"], "-", lw=1.2, label=f"this model (AURC {sel['aurc']['value']:.3f})")
    ax.axhline(sel["aurc_uninformed"], color="#8c959f", lw=0.8,
               label=f"confidence that says nothing ({sel['aurc_uninformed']:.3f})")
    keep_all = sel["n"] - sel["errors"]
    k = np.maximum(1, np.round(cov * sel["n"]))
    ax.plot(cov, np.maximum(0, k - keep_all) / k, ":", color="#1a7f37", lw=1,
            label=f"errors ranked last ({sel['aurc_optimal']:.3f})")
    ax.set_xlabel("share of test images kept (most confident first)")
    ax.set_ylabel("error rate among those kept")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.05, float(np.max(sel["curve"]["risk"])) * 1.1))
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return fig_uri(fig)
