"""Figures for the report: plots as SVG, image tiles as PNG, all as data URIs (self-contained HTML)."""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# text.parse_math off: class and file names are the user's text, drawn literally ("cost $5", "$\\alpha$"),
# never parsed as mathtext (which crashed the report on a class name with one "$").
plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                     "text.parse_math": False, "svg.hashsalt": "cvaudit"})  # reproducible SVG ids


def fig_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # the same figure, the same bytes
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def png_uri(arr: np.ndarray, min_size: int = 112, max_size: int | None = None) -> str:
    """uint8 (H, W[, 3]) -> PNG data URI, upscaled (nearest) so tiny images stay visible, and
    downscaled to max_size to keep reports small."""
    im = Image.fromarray(arr)
    if max_size and max(im.size) > max_size:
        im.thumbnail((max_size, max_size), Image.LANCZOS)
    elif max(im.size) < min_size:
        k = int(np.ceil(min_size / max(im.size)))
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnail(path: str, size: int = 96) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        return np.asarray(im)


def overlay(image: np.ndarray, heat: np.ndarray, vmax: float | None = None, alpha: float = 0.5,
            cmap: str = "jet") -> np.ndarray:
    """Blend a heat map (H, W) in [0, vmax] over a uint8 RGB image."""
    vmax = float(np.nanmax(heat)) if vmax is None else vmax
    h = np.clip(np.nan_to_num(heat) / vmax, 0, 1) if vmax > 0 else np.zeros_like(heat)
    colour = plt.get_cmap(cmap)(h)[..., :3] * 255
    return (alpha * colour + (1 - alpha) * image.astype(np.float32)).clip(0, 255).astype(np.uint8)


def learning_curves(history: list[dict]) -> str:
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.6))
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy")):
        ax.plot(ep, [r[f"train_{key}"] for r in history], "o-", ms=3, label="train")
        ax.plot(ep, [r[f"val_{key}"] for r in history], "s-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        phases = [r["phase"] for r in history]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(ep[i] - 0.5, color="grey", ls="--", lw=0.8)
                ax.text(ep[i] - 0.45, ax.get_ylim()[1], " fine-tune →", va="top", fontsize=7, color="grey")
    axes[1].legend(frameon=False)
    fig.tight_layout()
    return fig_uri(fig)


def confusion(rows: list[str], columns: list[str], matrix: list[list[int]]) -> str:
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = max(len(rows), len(columns))
    size = min(7.2, 1.6 + 0.38 * n)
    fig, ax = plt.subplots(figsize=(size, size * len(rows) / max(len(columns), 1) + 0.4))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig_uri(fig)


def colourbar(cmap: str = "jet", label: str = "relevance (0 = none, 1 = the image's maximum)") -> str:
    fig, ax = plt.subplots(figsize=(3.2, 0.35))
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap), cax=ax, orientation="horizontal", label=label)
    return fig_uri(fig)


def display_scale(heat: np.ndarray) -> np.ndarray:
    """A map's positive evidence on the shared [0, 1] scale: divided by its 99th percentile, clipped.
    (Percentile rather than maximum so one extreme pixel does not make the rest invisible.)"""
    pos = np.clip(np.nan_to_num(heat), 0, None)
    nz = pos[pos > 0]
    scale = np.percentile(nz, 99) if nz.size else 0.0
    return np.clip(pos / scale, 0, 1) if scale > 0 else pos


def faithfulness_curves(curves: dict, fractions: np.ndarray) -> str:
    """Mean deletion and insertion curves per method; the random map dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.8), sharey=True)
    for ax, key, title in ((axes[0], "deletion", "Deletion (lower is better)"),
                           (axes[1], "insertion", "Insertion (higher is better)")):
        for label, c in curves.items():
            style = dict(color="black", ls="--", lw=1.5) if label.startswith("Random") else dict(lw=1)
            ax.plot(fractions, c[key].mean(0), label=label, **style)
        ax.set_title(title)
        ax.set_xlabel("share of pixels removed" if key == "deletion" else "share of pixels revealed")
    axes[0].set_ylabel("class probability")
    axes[1].legend(frameon=False, fontsize=6.5, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return fig_uri(fig)


def agreement_heatmap(labels: list[str], matrix: list[list[float]], label: str = "rank correlation",
                      vmin: float = -1) -> str:
    m = np.asarray(matrix)
    size = 1.6 + 0.42 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = ax.imshow(m, cmap="RdBu_r" if vmin < 0 else "viridis", vmin=vmin, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(len(labels)):
        for j in range(len(labels)):
            dark = abs(m[i, j]) > 0.6 if vmin < 0 else m[i, j] < 0.5
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label=label)
    fig.tight_layout()
    return fig_uri(fig)


def layer_cka_heatmap(pair: dict) -> str:
    """Linear CKA between every layer of a transformer (rows) and of another model (columns), as Raghu et al."""
    m = np.asarray(pair["matrix"])
    fig, ax = plt.subplots(figsize=(1.8 + 0.4 * m.shape[1], 1.4 + 0.32 * m.shape[0]))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(m.shape[1]), pair["column_layers"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(m.shape[0]), pair["row_layers"], fontsize=7)
    ax.set_xlabel(f"{pair['columns']} layers (early → late)", fontsize=8)
    ax.set_ylabel(f"{pair['rows']} layers", fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white" if m[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="linear CKA")
    fig.tight_layout()
    return fig_uri(fig)


def embedding_scatter(points: np.ndarray, labels: np.ndarray, names: list[str], title: str,
                      wrong: np.ndarray | None = None) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for i, c in enumerate(np.unique(labels)):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=8, color=cmap(i % cmap.N), label=names[c], alpha=0.8, lw=0)
    if wrong is not None and wrong.any():
        ax.scatter(points[wrong, 0], points[wrong, 1], s=22, facecolors="none", edgecolors="black", lw=0.6,
                   label="misclassified")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(names) <= 20:
        ax.legend(frameon=False, fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5), markerscale=1.5)
    fig.tight_layout()
    return fig_uri(fig)


def thumbnail_scatter(points: np.ndarray, paths: list[str], max_points: int = 120, seed: int = 0) -> str:
    """t-SNE with the images themselves at their positions (a subsample), PNG for size."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    rng = np.random.default_rng(seed)
    idx = np.arange(len(points)) if len(points) <= max_points else rng.choice(len(points), max_points, replace=False)
    fig, ax = plt.subplots(figsize=(7, 5.5))
    ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0)
    for i in idx:
        ax.add_artist(AnnotationBbox(OffsetImage(thumbnail(paths[i], 28), zoom=0.9), points[i], frameon=False))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("t-SNE with thumbnails")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mosaic(tiles: np.ndarray, cols: int = 8, pad: int = 1, cmap: str | None = "viridis",
           vmax: float | None = None) -> np.ndarray:
    """(N, h, w) maps (coloured by `cmap` on one scale 0..vmax) or (N, h, w, 3) RGB in [0, 1] as one
    uint8 grid image with white gaps."""
    tiles = np.asarray(tiles, np.float32)
    if tiles.ndim == 3:
        vmax = float(tiles.max()) if vmax is None else vmax
        tiles = plt.get_cmap(cmap)(np.clip(tiles / vmax, 0, 1) if vmax > 0 else np.zeros_like(tiles))[..., :3]
    n, h, w, _ = tiles.shape
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = t
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def draw_box(image: np.ndarray, box, colour=(255, 200, 0), width: int = 2) -> np.ndarray:
    """A copy of a uint8 RGB image with the rectangle box = (y0, y1, x0, x1) drawn on it."""
    from PIL import ImageDraw
    im = Image.fromarray(image).convert("RGB")
    y0, y1, x0, x1 = (int(v) for v in box)
    ImageDraw.Draw(im).rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
    return np.asarray(im)


def outline_mask(image: np.ndarray, mask: np.ndarray, min_size: int = 64, colour=(255, 200, 0)) -> np.ndarray:
    """A copy of a uint8 RGB image, upscaled (nearest) to at least min_size, with the outline of the pixels of
    `mask` ((H, W) bool) drawn just outside them, so a thin mark inside stays visible."""
    from scipy.ndimage import binary_dilation
    k = max(1, int(np.ceil(min_size / max(image.shape[:2]))))
    big = np.repeat(np.repeat(np.asarray(Image.fromarray(image).convert("RGB")), k, 0), k, 1).copy()
    m = np.repeat(np.repeat(np.asarray(mask, bool), k, 0), k, 1)
    ring = binary_dilation(m, iterations=max(1, k // 4)) & ~m
    if not ring.any():  # the mask fills the image: outline its inner edge
        ring = m & ~np.pad(m, 1)[2:, 1:-1] | m & ~np.pad(m, 1)[:-2, 1:-1] | m & ~np.pad(m, 1)[1:-1, 2:] | m & ~np.pad(m, 1)[1:-1, :-2]
    big[ring] = colour
    return big


def reliability_diagram(before: dict, after: dict | None, temperature: float | None) -> str:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), before and after
    temperature scaling, with the share of images per bin below."""
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(4.4, 4.6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    for res, style, label in ((before, "o-", "as trained"), (after, "s-", f"temperature T = {temperature:.2f}"
                                                               if temperature else "")):
        if not res:
            continue
        b = [r for r in res["bins"] if r["count"]]
        ax.plot([r["confidence"] for r in b], [r["accuracy"] for r in b], style, ms=3,
                label=f"{label} (ECE {res['ece']:.3f})")
    ax.set_ylabel("accuracy in the bin")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    w = before["bins"][0]["hi"] - before["bins"][0]["lo"]
    hx.bar([r["lo"] + w / 2 for r in before["bins"]], [r["count"] / before["n"] for r in before["bins"]], width=w * 0.9,
           color="#8c959f")
    hx.set_xlabel("confidence (top class probability)")
    hx.set_ylabel("share")
    hx.set_xlim(0, 1)
    return fig_uri(fig)


def invariance_curves(curves: dict) -> str:
    """One panel per transform family: accuracy and consistency against severity."""
    fams = list(curves)
    cols = min(4, len(fams))
    rows = -(-len(fams) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.7 * rows), squeeze=False, sharey=True)
    for ax, f in zip(axes.flat, fams):
        c = curves[f]
        order = np.argsort(c["severities"])
        sev = np.asarray(c["severities"])[order]
        ax.plot(sev, np.asarray(c["accuracy"])[order], "o-", ms=2.5, label="accuracy")
        ax.plot(sev, np.asarray(c["consistency"])[order], "s--", ms=2.5, label="consistency")
        ax.axvline(c["identity"], color="#8c959f", lw=0.6)
        ax.set_title(f"{f} (score {c['score']:.2f})" if c["score"] is not None else f, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(fams):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6.5, frameon=False, loc="lower left")
    fig.tight_layout()
    return fig_uri(fig)


def adversarial_curves(curves: dict, flips: dict) -> str:
    """Accuracy against epsilon per attack, and the distribution of the smallest epsilon that flips
    each image's prediction."""
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(7.2, 2.6))
    for a, (eps, acc) in curves.items():
        ax.plot(np.asarray(eps) * 255, acc, "o-", ms=3, label=a.upper())
    ax.set_xlabel("epsilon (x 1/255, L-inf)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(frameon=False, fontsize=7)
    fl = {a: np.asarray(v) * 255 for a, v in flips.items()}
    grid = sorted({float(e) for v in fl.values() for e in v[np.isfinite(v)]})
    ticks = [f"{v:.1f}" for v in grid] + ["never"]
    for a, v in fl.items():
        share = [float(np.mean(v == e)) for e in grid] + [float(np.mean(~np.isfinite(v)))]
        hx.plot(range(len(ticks)), share, "o-", ms=3, label=a.upper())
    hx.set_xticks(range(len(ticks)), ticks)
    hx.set_xlabel("smallest epsilon (x 1/255) that flips the prediction")
    hx.set_ylabel("share of images")
    hx.legend(frameon=False, fontsize=7)
    hx.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig_uri(fig)


def memorisation_curves(res: dict) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    for name, style in (("true", "o-"), ("shuffled", "s-")):
        ax.plot(res["epochs"], res["train_accuracy"][name], style, ms=3, label=f"{name} labels")
    ax.axhline(res["chance"], color="#8c959f", lw=0.8, ls="--", label="chance (largest class)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(frameon=False, fontsize=7)
    return fig_uri(fig)


def comparison_scatter(rows: list[dict], panels: list[tuple[str, str]]) -> str | None:
    """Test accuracy (x) against another metric (y) per panel, one point per model, colour per dataset."""
    panels = [(k, label) for k, label in panels if any(r["values"].get(k) is not None for r in rows)]
    if not panels:
        return None
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 0.6, 3.0), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for r in rows:
            y = r["values"].get(key)
            if y is None:
                continue
            c = cmap(datasets.index(r["dataset"]) % 10)
            ax.scatter(r["values"]["accuracy"], y, color=c, s=28, zorder=3)
            ax.annotate(r["model"], (r["values"]["accuracy"], y), fontsize=6.5, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel("test accuracy")
        ax.set_ylabel(label, fontsize=8)
        ax.margins(0.2)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i % 10), label=d) for i, d in enumerate(datasets)]
    axes[0][-1].legend(handles=handles, frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return fig_uri(fig)
