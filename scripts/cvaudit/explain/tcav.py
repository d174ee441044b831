"""What the model uses, in the user's words: Testing with Concept Activation Vectors (TCAV, Kim et al. 2018).

A concept is a folder of example images (config key `concepts`: a watermark, a hospital tag, stripes). At one
layer (by default the one Grad-CAM reads, or the block before it where only pooling and a linear head follow; a
ViT's last block tokens), a
linear classifier separates the concept's activations from those of a random counterpart set of the model's
own training images; its normal, pointing to the concept, is the concept activation vector (CAV). A class's
TCAV score is the share of its test images whose class logit rises when the layer's activation moves along the
CAV (a positive directional derivative). Kim et al.'s test: the CAV is learnt against each of several random
sets, and the same is done for random sets against random sets; the concept's scores and the random ones are
compared by a two-sided t-test, Holm-corrected over every concept and class. A concept the CAVs cannot tell
from random images (held-out accuracy under `min_cav_accuracy`) is not represented at the layer: no score is
read from it. A direction is not a decision: the concept's images are ordinary images that carry it, so the share
of them the model predicts as each class, against ordinary test images (the prediction shift), says whether the
concept pulls images into the class; for a concept marked `forbidden` that is verdict `forbidden_concept`
(cvaudit.report.concept_sections).
"""
from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import torch

from cvaudit.config import MIN_CONCEPT_IMAGES
from cvaudit.core import stats
from cvaudit.core.files import write_json
from cvaudit.core.images import image_files

log = logging.getLogger("cvaudit.explain.tcav")


def tcav_layer(net, spec: dict, layer: str = "auto"):
    """The module whose output the CAVs live in: the configured one, or (auto) Grad-CAM's
    (cvaudit.explain.methods.cam) unless only pooling and a linear head follow it (the class gradient there is the
    same for every image, and each CAV would score every image alike): then the block before it."""
    from cvaudit.explain.methods import get_method
    from cvaudit.explain.methods.cam import block_outputs
    from cvaudit.net.hooks import Hooks
    from cvaudit.net.pixel_space import inner
    from cvaudit.net.tokens import token_layout
    dev = next(net.parameters()).device
    size = spec["input_size"]
    cam_layer = get_method("gradcam", layer=layer).layer(net, torch.zeros(1, 3, size, size, device=dev))
    if layer != "auto" or token_layout(inner(net)) is not None:
        return cam_layer
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    names = dict(inner(net).named_modules())
    done: list[tuple[str, torch.Tensor]] = []  # block outputs in the order their forward passes finish
    with Hooks() as hooks, torch.enable_grad():
        for n in block_outputs(inner(net)):
            hooks.forward(names[n], lambda m, i, o, n=n: done.append((n, o)))
        hooks.forward(cam_layer, lambda m, i, o: done.append(("", o)))
        score = net(x)[:, 0].sum()
        at = next(o for n, o in done if n == "")
        g, = torch.autograd.grad(score, at)
    if not torch.allclose(g[0], g[1]):
        return cam_layer
    before = [(n, o) for n, o in done[:[n for n, _ in done].index("")]
              if n and o is not at and o.dim() == 4 and min(o.shape[-2:]) > 1]
    return names[before[-1][0]] if before else cam_layer


def layer_values(net, module, rows: list[dict], spec: dict, device, target: int | None = None,
                 batch_size="auto") -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The layer's output for each image, flattened (N x D), streamed in batches; with `target` also the gradient
    of that class's logit with respect to it (the directional derivatives' other factor); and each image's
    predicted class."""
    from cvaudit.core.manifest import image_loader
    from cvaudit.net.hooks import Hooks
    from cvaudit.net.models import auto_batch
    from cvaudit.net.transforms import eval_transform
    store: dict[str, torch.Tensor] = {}
    acts, grads, preds = [], [], []
    bs = auto_batch(spec["input_size"], spec["input_size"], device, batch_size)
    with Hooks() as hooks:
        hooks.forward(module, lambda m, i, o: store.__setitem__("a", o))
        for x, _ in image_loader(rows, spec["class_names"], eval_transform(spec), bs, device):
            x = x.to(device)
            if target is None:
                with torch.no_grad():
                    logits = net(x)
            else:
                x.requires_grad_(True)  # frozen weights: the graph must still reach the layer
                with torch.enable_grad():
                    logits = net(x)
                    g, = torch.autograd.grad(logits[:, target].sum(), store["a"])  # images are independent in eval mode
                grads.append(g.flatten(1).float().cpu())
            acts.append(store["a"].detach().flatten(1).float().cpu())
            preds.append(logits.detach().argmax(1).cpu())
    if not acts:
        return np.zeros((0, 0), np.float32), None, np.zeros(0, int)
    return (torch.cat(acts).numpy(), torch.cat(grads).numpy() if grads else None,
            torch.cat(preds).numpy().astype(int))


def fit_cav(concept: np.ndarray, counterpart: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """The unit normal of a logistic regression (scikit-learn) separating the concept's activations from the
    counterpart's, pointing to the concept, and its accuracy on a held-out third of both (stratified, seeded)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    x = np.concatenate([concept, counterpart]).astype(np.float64)
    y = np.r_[np.ones(len(concept)), np.zeros(len(counterpart))]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=1 / 3, stratify=y, random_state=seed)
    clf = LogisticRegression(max_iter=2000).fit(x_tr, y_tr)
    w = clf.coef_[0]
    return w / max(float(np.linalg.norm(w)), 1e-12), float(clf.score(x_te, y_te))


def tcav_score(gradients: np.ndarray, cav: np.ndarray) -> float:
    """The share of images whose class logit rises along the CAV (positive directional derivative)."""
    return float(np.mean(gradients @ cav > 0)) if len(gradients) else float("nan")


def concept_test(concept_scores, random_scores, tests: int, alpha: float) -> dict:
    """Kim et al.'s test of one concept for one class: its TCAV scores against many random counterparts vs the
    random CAVs' scores, two-sided Welch t-test; the difference of means with its interval at the
    Bonferroni-corrected level (the same correction as the verdict's)."""
    from scipy.stats import ttest_ind
    c, r = np.asarray(concept_scores, float), np.asarray(random_scores, float)
    diff = float(c.mean() - r.mean())
    if np.ptp(c) == 0 and np.ptp(r) == 0:  # no spread: the t-test is undefined; equal means differ by nothing
        return {"p": 1.0 if diff == 0 else 0.0, "difference": (diff, diff, diff)}
    with warnings.catch_warnings():  # scores all 1 (or 0) on one side: scipy warns of its moments' precision
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_ind(c, r, equal_var=False)
    ci = res.confidence_interval(confidence_level=1 - alpha / max(1, tests))
    # the scores are shares: their difference lies in [-1, 1] whatever the t-interval says
    return {"p": float(res.pvalue), "difference": (diff, max(-1.0, float(ci.low)), min(1.0, float(ci.high)))}


def _sample(rows: list[dict], n: int, rng) -> list[dict]:
    return [rows[i] for i in sorted(rng.choice(len(rows), size=min(n, len(rows)), replace=False))]


def tcav(net, spec: dict, concepts: dict, train_rows: list[dict], test_rows: list[dict], options: dict, seed: int,
         device) -> dict:
    """TCAV of each concept ({name: {"path", "forbidden", ...}}) for each class, against options["random_sets"]
    random counterpart sets of `train_rows` (options["images"] each) and the class's test images (at most
    options["class_images"])."""
    from statsmodels.stats.multitest import multipletests

    from cvaudit.explain.methods.cam import layer_name
    rng = np.random.default_rng(seed)
    module = tcav_layer(net, spec, options["layer"])
    layer = layer_name(net, module)
    names, k = list(spec["class_names"]), int(options["random_sets"])
    # k + 1 random sets: the concept is set against sets 1..k, and set 0 against 1..k gives the random CAVs
    pool = _sample(train_rows, (k + 1) * options["images"], rng)
    draws = [pool[i::k + 1] for i in range(k + 1)] if len(pool) >= 2 * (k + 1) else None
    result = {"layer": layer, "random_sets": k, "n_random_images": len(pool), "alpha": options["alpha"],
              "min_cav_accuracy": options["min_cav_accuracy"], "concepts": {}, "classes": names, "random": {}}
    if draws is None:
        result["reason"] = f"the training split has {len(train_rows)} images: too few for {k + 1} random sets"
        return result
    random_acts = [layer_values(net, module, d, spec, device)[0] for d in draws]
    per_class, reference = {}, []  # the class's gradients; every sampled test image's prediction
    for c, name in enumerate(names):
        rows = [r for r in test_rows if r["label"] == name]
        if rows:
            _, per_class[name], pred = layer_values(net, module, _sample(rows, options["class_images"], rng), spec,
                                                    device, target=c)
            reference.append(pred)
    reference = np.concatenate(reference) if reference else np.zeros(0, int)
    random_cavs = [fit_cav(random_acts[0], random_acts[i], seed + i) for i in range(1, k + 1)]
    result["random"] = {"cav_accuracy": float(np.mean([a for _, a in random_cavs])),
                        "scores": {n: [tcav_score(g, v) for v, _ in random_cavs] for n, g in per_class.items()}}
    tests = []
    for cname, ccfg in concepts.items():
        files = image_files(ccfg["path"])
        entry = {"path": str(ccfg["path"]), "forbidden": bool(ccfg.get("forbidden", False)),
                 "description": ccfg.get("description", ""), "n_images": len(files),
                 "examples": files[:options["examples"]], "classes": []}
        result["concepts"][cname] = entry
        if len(files) < MIN_CONCEPT_IMAGES:
            entry["reason"] = f"{len(files)} image(s) in {ccfg['path']}: at least {MIN_CONCEPT_IMAGES} needed"
            continue
        acts, _, predicted = layer_values(net, module, [{"path": f, "label": names[0]} for f in files], spec, device)
        entry["predicted"] = {n: int((predicted == c).sum()) for c, n in enumerate(names)}
        cavs = [fit_cav(acts, random_acts[i], seed + i) for i in range(1, k + 1)]
        acc = np.array([a for _, a in cavs])
        entry["cav_accuracy"] = {"mean": float(acc.mean()), "min": float(acc.min())}
        entry["separable"] = bool(acc.mean() >= options["min_cav_accuracy"])
        if not entry["separable"]:
            entry["reason"] = (f"the CAVs tell the concept from random images on {acc.mean():.0%} of held-out images "
                               f"(under {options['min_cav_accuracy']:.0%}): it is not represented at {layer}")
            continue
        for cls, grads in per_class.items():
            scores = [tcav_score(grads, v) for v, _ in cavs]
            row = {"class": cls, "n": int(len(grads)), "scores": scores, "mean": float(np.mean(scores)),
                   "random_mean": float(np.mean(result["random"]["scores"][cls]))}
            entry["classes"].append(row)
            tests.append(row)
    m = len(tests)
    if m:
        for row in tests:
            t = concept_test(row["scores"], result["random"]["scores"][row["class"]], m, options["alpha"])
            diff, lo, hi = t["difference"]
            row["p"] = t["p"]
            row["difference"] = stats.estimate(diff, row["n"], lo, hi, "welch t",
                                               note=f"over {k} random counterpart sets, Bonferroni over {m} tests")
        reject, p_adj, _, _ = multipletests([r["p"] for r in tests], alpha=options["alpha"], method="holm")
        for row, rej, p in zip(tests, reject, p_adj):
            row["p_adjusted"] = float(p)
            row["significant"] = bool(rej)
            row["drives"] = bool(rej and row["difference"]["value"] > 0)
        for cname, entry in result["concepts"].items():
            for row in entry["classes"]:
                row["shift"] = prediction_shift(entry["predicted"][row["class"]], entry["n_images"],
                                                int((reference == names.index(row["class"])).sum()), len(reference),
                                                row["class"], options["alpha"] / m)
                row["confirmed"] = bool(row["drives"] and row["shift"]["ci_low"] > 0)
    result["n_tests"] = m
    result["n_reference"] = int(len(reference))
    return result


def prediction_shift(k_concept: int, n_concept: int, k_ref: int, n_ref: int, cls: str, alpha: float) -> dict:
    """The behavioural confirmation of a concept driving a class: the share of the concept's images the model
    predicts as the class minus the share of ordinary test images it does (Newcombe's interval at `alpha`). The
    concept's images are ordinary images with the concept: a concept the class relies on pulls them into it."""
    lo, hi = stats.gap_interval(k_concept, n_concept, k_ref, n_ref, alpha)
    return stats.estimate(k_concept / n_concept - k_ref / max(1, n_ref), n_concept, lo, hi, "newcombe",
                          note=f"{k_concept} of {n_concept} concept images predicted {cls}, against {k_ref} of {n_ref} "
                               f"test images (interval at {1 - alpha:.4g})")


def run_tcav(model_path, manifest, concepts: dict, options: dict, seed: int, device: str, threads: int, out) -> dict:
    from cvaudit.core.manifest import read_manifest
    from cvaudit.net.models import load_model, resolve_device
    from cvaudit.net.pixel_space import seed_everything
    t0 = time.time()
    seed_everything(seed, threads)
    dev = resolve_device(device)
    net, spec = load_model(model_path, dev)
    net.eval()
    result = tcav(net, spec, concepts, read_manifest(manifest, "train"), read_manifest(manifest, "test"), options,
                  seed, dev)
    result["seconds"] = round(time.time() - t0, 2)
    write_json(out, result)
    drives = [(c, r["class"]) for c, e in result["concepts"].items() for r in e["classes"] if r.get("drives")]
    log.info("tcav at %s: %d concept(s), %d test(s), drives: %s (%.1fs)", result["layer"], len(concepts),
             result.get("n_tests", 0), drives or "none", result["seconds"])
    return result
