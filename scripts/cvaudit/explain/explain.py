"""The explain stage: each attribution method (cvaudit.explain.methods) explains the audit set, for the predicted
class of each image and its true class where they differ, and its maps are scored by the trust checks
(cvaudit.explain.trust): deletion/insertion faithfulness, and on the first `sanity_images` images cascading
randomisation, the random-logit test and max-sensitivity. Sharded runs equal one job."""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch

from cvaudit.core import progress
from cvaudit.core.files import load_audit_set, save_npz
from cvaudit.explain.methods import (
    LIME,
    SHAP,
    Completeness,
    DeepLiftShap,
    GradCAM,
    IntegratedGradients,
    NotApplicable,
    attribute_batched,
    get_method,
    layer_name,
    refuse_export,
)
from cvaudit.net.export import is_export
from cvaudit.net.models import auto_batch
from cvaudit.net.pixel_space import audit_images, pixel_model

log = logging.getLogger("cvaudit.explain.explain")


PER_IMAGE = ("maps_pred", "maps_true", "faith_deletion", "faith_insertion", "faith_deletion_auc",
             "faith_insertion_auc", "converged", "ig_steps", "completeness_error", "lime_r2_fresh", "lime_r2_own",
             "shap_regions", "road")


ROAD_PERCENTILES = (10, 30, 50, 70, 90)  # the schema's default (explain.trust.road.percentiles)

# Images explained at a time: the audit set stays uint8 and only this many images are floats on the device
# at once (with their maps, curves and perturbations), so memory does not grow with audit.max_images.
CHUNK_IMAGES = 64


STABILITY_SEED_OFFSET = 7919  # the second seed of the stability check: the method's own plus this

def part(method: str, job: dict, start: int = 0, stop: int | None = None) -> tuple[dict, dict]:
    """Explain audit images [start, stop) (all by default): the predicted class of each (and the true
    class where they differ), then score the maps: deletion/insertion faithfulness, and (in the part
    holding the first images) the cascading randomisation check. Every per-image result depends only
    on that image, so parts concatenated equal one whole run, and the images are streamed through in
    chunks of CHUNK_IMAGES. job (cvaudit.core.shards): model, data (the audit set), options (the method's),
    trust, seed, device, threads."""
    t0 = time.time()
    options, trust, seed = job["options"], job["trust"], job["seed"]
    model, spec, net, dev = pixel_model(job["model"], seed, job["device"], job["threads"])
    audit = load_audit_set(job["data"])
    n_all, h, w = audit["images"].shape[:3]
    stop = n_all if stop is None else min(stop, n_all)
    start = min(start, stop)
    batch = auto_batch(h, w, dev, trust["batch_size"])
    m = get_method(method, batch_size=batch, **({"seed": seed} | options))
    result = {"method": method, "label": m.label, "kind": m.kind, "reads": m.reads, "applicable": True,
              "reason": "", "options": m.options, "start": start, "n_images": int(stop - start), "batch_size": batch}
    if isinstance(m, Completeness):
        result.update(promise=m.promise, caveat=m.caveat)
    if isinstance(m, DeepLiftShap):  # its background: the same seeded draw from the whole audit set in every shard
        k = min(max(2, int(m.options["background"])), n_all)
        pick = np.sort(np.random.default_rng(seed).choice(n_all, k, replace=False))
        m.background = torch.from_numpy(audit["images"][pick]).to(dev).permute(0, 3, 1, 2).float().div(255)
    arrays: dict = {}
    try:
        if stop == start:  # an empty shard (the audit set is smaller than the shards planned for it)
            result["attribution_seconds"] = 0.0
            return result, arrays
        refuse_export(m, net)  # before a CAM's layer is looked for
        if isinstance(m, GradCAM):
            result["layer"] = layer_name(net, m.layer(net, audit_images(audit, dev, start, start + 1)))
        chunk, seconds = max(CHUNK_IMAGES, trust["sanity_images"]), 0.0
        progress.task(f"{m.label}: maps and trust checks", stop - start)
        for lo in range(start, stop, chunk):  # each chunk's arrays go into one array per key, then are freed
            got, took = _explain_chunk(m, net, audit, lo, min(lo + chunk, stop), dev, trust, seed, batch, result)
            seconds += took
            progress.advance(min(lo + chunk, stop) - lo)
            for k, v in got.items():
                if k == "faith_fractions":  # the same for every image
                    arrays.setdefault(k, v)
                    continue
                if k not in arrays:
                    arrays[k] = np.empty((stop - start,) + v.shape[1:], v.dtype)
                arrays[k][lo - start:lo - start + len(v)] = v
        result["attribution_seconds"] = round(seconds, 3)
        if "converged" in arrays and not arrays["converged"].all():
            log.warning("integrated gradients: %d of %d maps miss completeness by more than %.0f%% at %d steps",
                        int((~arrays["converged"].astype(bool)).sum()), len(arrays["converged"]),
                        100 * m.options["tolerance"], m.options["max_steps"])
    except NotApplicable as e:
        log.warning("%s is not applicable to this model: %s", m.label, e)
        result.update(applicable=False, reason=str(e))
        arrays = {}
    finally:
        result["seconds"] = round(time.time() - t0, 2)
    return result, arrays


def _explain_chunk(m, net, audit: dict, lo: int, hi: int, dev, trust: dict, seed: int, batch: int,
                   result: dict) -> tuple[dict, float]:
    """Audit images [lo, hi): their maps and trust scores (and the sanity check into `result` when lo is
    0). Returns the per-image arrays and the seconds spent attributing the predicted class."""
    from cvaudit.explain import trust as tr

    x, index = audit_images(audit, dev, lo, hi), torch.arange(lo, hi)
    preds = torch.from_numpy(audit["preds"][lo:hi]).to(dev)
    targets = torch.from_numpy(audit["targets"][lo:hi]).to(dev)
    arrays = {}
    if isinstance(m, (LIME, IntegratedGradients, Completeness)):
        m.records.clear()  # this chunk's records
    ta = time.time()
    maps_pred = attribute_batched(m, net, x, preds, index)
    took = time.time() - ta
    if isinstance(m, LIME):  # each surrogate's fit on fresh samples, and its own score
        arrays.update(lime_r2_fresh=np.array([r["r2_fresh"] for r in m.records[:len(x)]]),
                      lime_r2_own=np.array([r["r2_own"] for r in m.records[:len(x)]]))
    if isinstance(m, SHAP):  # its effective resolution: distinct values (regions) per map
        arrays.update(shap_regions=np.array([len(np.unique(mp)) for mp in maps_pred]))
    if isinstance(m, IntegratedGradients):  # completeness per image: unconverged maps leave the trust scores
        rec = {k: np.concatenate([r[k] for r in m.records]) for k in ("steps", "completeness_error", "converged")}
        arrays.update(converged=rec["converged"], ig_steps=rec["steps"], completeness_error=rec["completeness_error"])
    if isinstance(m, Completeness):  # its own promise, checked per image (e.g. the map sums to F(x) - F(baseline))
        arrays.update(completeness_error=np.concatenate([r["completeness_error"] for r in m.records]))
    differ = (preds != targets).nonzero().flatten()
    maps_true = np.full_like(maps_pred, np.nan)
    if len(differ):
        maps_true[differ.cpu().numpy()] = attribute_batched(m, net, x[differ], targets[differ], index[differ.cpu()])
    arrays.update(maps_pred=maps_pred, maps_true=maps_true)
    faith = tr.deletion_insertion(net, x, preds, torch.from_numpy(maps_pred), steps=trust["steps"],
                                  batch_size=batch, seed=seed, index=index.tolist(),
                                  substrate=trust.get("substrate", "rise"))
    arrays.update({f"faith_{k}": v for k, v in faith.items()})
    if trust.get("road", {}).get("enabled", True):
        arrays["road"] = tr.road(net, x, preds, maps_pred, trust.get("road", {}).get("percentiles", ROAD_PERCENTILES),
                                 seed, index.tolist(), trust.get("road", {}).get("imputations", 1))
    k = min(trust["sanity_images"], len(x)) if lo == 0 else 0
    if m.kind != "reference" and k > 0:
        pinned = m.at_most(int(arrays["ig_steps"][:k].max())) if isinstance(m, IntegratedGradients) \
            else contextlib.nullcontext()
        if not is_export(net):  # an export has no parameters to re-initialise: n/a (its report's first page says so)
            with pinned:  # the randomised models' maps at the trained maps' step count
                result["sanity"] = tr.cascading_randomisation(m, net, x[:k], preds[:k], maps_pred[:k],
                                                              stages=trust["sanity_stages"], seed=seed)
        if "converged" in arrays and "sanity" in result:
            result["sanity"]["converged"] = arrays["converged"][:k].tolist()
        if trust.get("random_logit", True):
            result["random_logit"] = tr.random_logit(m, net, x[:k], preds[:k], maps_pred[:k],
                                                     len(audit["class_names"]), seed, range(k))
        result["sensitivity"] = tr.max_sensitivity(m, net, x[:k], preds[:k], trust.get("sensitivity_radius", 0.02),
                                                   trust.get("sensitivity_samples", 4), seed)
        if "seed" in m.options:  # a method that draws at random: the same images with another seed
            result["stability"] = seed_stability(m, net, x[:k], preds[:k], maps_pred[:k], index[:k])
    return arrays, took


def seed_stability(m, net, x: torch.Tensor, target: torch.Tensor, maps: np.ndarray, index) -> dict:
    """How much a method's maps depend on its random draws: the rank correlation (trust.rank_corr) of each map with
    the map of the same image and class from the method with another seed. A low one means a single map shows
    the draw as much as the model."""
    from cvaudit.explain import trust as tr
    twin = type(m)(batch_size=m.batch_size, **{**m.options, "seed": int(m.options["seed"]) + STABILITY_SEED_OFFSET})
    corr = tr.rank_corr(maps, attribute_batched(twin, net, x, target, index))
    return {"per_image": corr.tolist(), "median": float(np.median(corr)) if len(corr) else None,
            "seeds": [int(m.options["seed"]), int(m.options["seed"]) + STABILITY_SEED_OFFSET]}


def merge_explain(parts: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """One method's result over the whole audit set from its parts (in image order)."""
    full = [(r, a) for r, a in parts if r["n_images"] > 0] or parts[:1]
    result = {k: v for k, v in full[0][0].items() if k != "start"}
    result["seconds"] = round(sum(r["seconds"] for r, _ in parts), 2)
    result["n_images"] = int(sum(r["n_images"] for r, _ in parts))
    result["shards"] = len(parts)
    bad = [r for r, _ in full if not r["applicable"]]
    if bad:
        result.update(applicable=False, reason=bad[0]["reason"])
        result.pop("sanity", None)
        return result, {}
    result["attribution_seconds"] = round(sum(r.get("attribution_seconds", 0) for r, _ in full), 3)
    for key in ("sanity", "random_logit", "sensitivity", "stability"):  # computed in the part holding the first images
        got = [r[key] for r, _ in full if r.get(key)]
        if got:
            result[key] = got[0]
    arrays = {k: full[0][1][k] if len(full) == 1 else np.concatenate([a[k] for _, a in full])
              for k in PER_IMAGE if k in full[0][1]}  # one part (no shards): its arrays as they are
    if "faith_fractions" in full[0][1]:
        arrays["faith_fractions"] = full[0][1]["faith_fractions"]
        ok = arrays["converged"].astype(bool) if "converged" in arrays else np.ones(len(arrays["faith_deletion_auc"]), bool)
        result["faithfulness"] = {"deletion_auc": float(arrays["faith_deletion_auc"][ok].mean()) if ok.any() else None,
                                  "insertion_auc": float(arrays["faith_insertion_auc"][ok].mean()) if ok.any() else None,
                                  "n": int(ok.sum()), "left_out": int((~ok).sum())}
        if "road" in arrays:
            result["road"] = float(arrays["road"][ok].mean()) if ok.any() else None
        if "converged" in arrays:
            result["completeness"] = {"converged": int(ok.sum()), "of": int(len(ok)),
                                      "max_error": float(np.max(arrays["completeness_error"])),
                                      "max_steps": int(np.max(arrays["ig_steps"]))}
        elif "completeness_error" in arrays:  # DeepLIFT, the SHAP family, LRP: reported, flagged when broken
            err = arrays["completeness_error"]
            tol = result["options"].get("tolerance", 0.05)
            result["axiom"] = {"within": int((err <= tol).sum()), "of": int(len(err)), "tolerance": tol,
                               "median_error": float(np.median(err)) if len(err) else None,
                               "promise": result.get("promise", ""), "caveat": result.get("caveat", "")}
    return result, arrays


def merge(method: str, job: dict, parts: list[tuple[dict, dict]], out) -> dict:
    """The explain stage's output (cvaudit.core.shards): one method's maps and trust scores over the audit set."""
    result, arrays = merge_explain(parts)
    save_npz(out, result, **arrays)
    log.info("%s: %s in %.1fs (%d images, %d part(s))", method, "done" if result["applicable"] else "not applicable",
             result["seconds"], result["n_images"], len(parts))
    return result
