"""Clever-Hans detection: SpRAy over many test images per predicted class (cvaudit.explain.spray) and the global
properties each class's training images stand out on (cvaudit.explain.global_cues), each suspect then tested by a
counterfactual against its own control.

- A flagged cluster's region (its cells: a compact region, an edge strip or the border ring) is taken from the
  member that puts the most relevance there and pasted into test images of other classes: the share now
  predicted as the class is the *paste* flip rate. The region is also removed (biharmonic inpainting,
  scikit-image) from the members: the share no longer predicted as the class is the *remove* flip rate. Two
  controls on the same images, the stronger counts: the region's pixels taken from other images of other
  classes, and the same cells moved to a place as often on an object as the region
  (cvaudit.explain.spray.control_region; a piece of the object flips its control too).
- A global suspect (a property) is shifted to the class's mean in the other classes' images, and as far the
  other way for the control (see cvaudit.explain.global_cues).

The verdict `shortcut_suspected` reads the *gain*: the paste flip rate minus its control's, over the same
images, with a paired bootstrap interval whose level is corrected for the number of suspects tested
(Bonferroni). A region whose control flips as often is not a shortcut: the model reacts to any patch there.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from cvaudit.core import progress, stats
from cvaudit.core.files import save_npz
from cvaudit.explain import global_cues
from cvaudit.explain.methods.base import NotApplicable, attribute_batched, get_method
from cvaudit.explain.spray import box_of, control_region, describe, foreground_frequency, pixel_mask, pool_maps, spray
from cvaudit.net.models import auto_batch
from cvaudit.net.pixel_space import pixel_model, predict
from cvaudit.net.sample import robustness_images

log = logging.getLogger("cvaudit.explain.clever_hans")

REFERENCE = ("Lapuschkin et al. 2019, Unmasking Clever Hans predictors and assessing what machines really learn "
             "(Nature Communications 10:1096)")


def _mask(mask, like: torch.Tensor) -> torch.Tensor:
    if isinstance(mask, tuple):  # (y0, y1, x0, x1): a box
        y0, y1, x0, x1 = mask
        m = torch.zeros(like.shape[-2:], dtype=torch.bool)
        m[y0:y1, x0:x1] = True
        return m.to(like.device)
    return torch.as_tensor(np.asarray(mask, bool), device=like.device)


def paste(x: torch.Tensor, source: torch.Tensor, mask) -> torch.Tensor:
    """Copies of x with the pixels of `mask` ((H, W) bool, or a (y0, y1, x0, x1) box) taken from `source`."""
    m = _mask(mask, x)
    return torch.where(m, source.to(x), x)


def remove(x: torch.Tensor, mask) -> torch.Tensor:
    """Copies of x with the mask's pixels inpainted from their surroundings (scikit-image's biharmonic
    inpainting)."""
    from skimage.restoration import inpaint_biharmonic

    imgs = x.permute(0, 2, 3, 1).cpu().double().numpy()
    m = _mask(mask, x).cpu().numpy()
    out = np.stack([inpaint_biharmonic(im, m, channel_axis=-1) for im in imgs]).clip(0, 1) if len(imgs) else imgs
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype)


def maps_for(net, x: torch.Tensor, pred: torch.Tensor, options: dict, batch: int, seed: int):
    """The maps of the predicted class by the first of the configured methods that applies, and why the ones
    before it did not."""
    why = []
    for name in options["methods"]:
        m = get_method(name, batch_size=batch, seed=seed)
        try:
            return name, attribute_batched(m, net, x, pred), "; ".join(why)
        except NotApplicable as e:
            why.append(f"{name} does not apply: {e}")
    raise NotApplicable("; ".join(why))


def _outcomes(net, imgs: torch.Tensor, batch: int) -> np.ndarray:
    return predict(net, imgs, batch)[0].numpy() if len(imgs) else np.zeros(0, np.int64)


def region_test(net, x, c: int, source: int, members, others, mask, moved, batch: int) -> dict:
    """Paste and remove a region and its controls: per-image outcomes (True: the prediction flipped) and the
    changed images. Two controls, the verdict reads the one that flips more: the same region's pixels from other
    images of other classes (each target gets another's: does this content matter, or any change there?) and,
    where the region can move (`moved` not None), the same cells elsewhere from the same source (does this place
    matter?)."""
    pasted, removed = paste(x[others], x[source], mask), remove(x[members], mask)
    p, r = _outcomes(net, pasted, batch), _outcomes(net, removed, batch)
    donors = np.roll(others, 1) if len(others) > 1 else others
    m = _mask(mask, x)
    controls = {"other images": _outcomes(net, torch.where(m, x[donors], x[others]), batch) == c}
    if moved is not None:
        controls["same cells elsewhere"] = _outcomes(net, paste(x[others], x[source], moved), batch) == c
    control_remove = np.zeros(len(members), bool)  # a ring cannot move: its removal has no control
    if moved is not None:
        control_remove = _outcomes(net, remove(x[members], moved), batch) != c
    return {"paste": p == c, "controls": controls, "remove": r != c, "control_remove": control_remove,
            "paste_pred": p, "remove_pred": r, "pasted": pasted, "removed": removed}


def property_test(net, x, c: int, members, others, suspect: dict, batch: int, seed: int) -> dict:
    """Shift a property towards the class's training mean in other classes' images (and as far the other way:
    the control); shift the class's own images to the other classes' mean (and as far the other way)."""
    name = suspect["property"]
    out = {}
    for kind, imgs, target in (("paste", x[others], suspect["class_mean"]), ("remove", x[members], suspect["others_mean"])):
        if not len(imgs):
            out.update({kind: np.zeros(0, bool), f"control_{kind}": np.zeros(0, bool), f"{kind}_pred": np.zeros(0, int),
                        "pasted" if kind == "paste" else "removed": imgs})
            continue
        now = float(global_cues.measure(name, imgs).mean())
        s, reached = global_cues.strength_for(name, imgs, target, seed)
        s_c, _ = global_cues.strength_for(name, imgs, 2 * now - target, seed)
        moved = global_cues.transform(name, imgs, s, seed)
        pred, pred_c = _outcomes(net, moved, batch), _outcomes(net, global_cues.transform(name, imgs, s_c, seed), batch)
        flipped = (lambda p: p == c) if kind == "paste" else (lambda p: p != c)
        out.update({kind: flipped(pred), f"control_{kind}": flipped(pred_c), f"{kind}_pred": pred,
                    "pasted" if kind == "paste" else "removed": moved})
        suspect[f"{kind}_strength"], suspect[f"{kind}_reached"], suspect[f"{kind}_from"] = s, reached, now
        suspect[f"{kind}_control_strength"] = s_c
    out["controls"] = {"shifted the other way": out.pop("control_paste")}
    return out


def analyse(net, x8: torch.Tensor, y: torch.Tensor, class_names: list[str], options: dict, seed: int, dev,
            train: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[dict, dict]:
    """SpRAy over the test images (x8, y) and the training images `train` (x8, y; none when not given), the
    global suspects of the training images, and every suspect's counterfactual on held-out test images only.
    The training images are where the model learnt its cue: a test split without it hides a mark from the maps.
    Returns (meta, arrays for the report)."""
    n_test = len(x8)
    if train is not None and len(train[0]):
        x8, y = torch.cat([x8, train[0]]), torch.cat([y, train[1]])
    held_out = np.arange(len(x8)) < n_test
    x = x8.to(dev).float().div(255)
    batch = auto_batch(x.shape[-2], x.shape[-1], dev)
    pred, _ = predict(net, x, batch)
    log.info("attributing %d images (%d test, %d training) with the first of %s that applies", len(x), n_test,
             len(x) - n_test, options["methods"])
    progress.task(f"attributing {len(x)} images for SpRAy")
    method, maps, why = maps_for(net, x, pred.to(dev), options, batch, seed)
    progress.task("clustering each class's maps and testing its suspects", len(class_names), "classes")
    grid = options["grid"]
    pooled = pool_maps(maps, grid)
    obj = foreground_frequency(x8.numpy(), grid)
    rng = np.random.default_rng(seed)
    H, W = x.shape[-2:]
    pn, yn = pred.numpy(), y.numpy()
    result = {"n": int(len(x)), "n_test": int(n_test), "n_train": int(len(x) - n_test), "method": method,
              "method_note": why, "grid": grid, "classes": [], "object_frequency": obj.tolist(), "reference": REFERENCE}
    arrays = {"cluster_maps": [], "cluster_class": [], "cluster_thumbs": [], "evidence": [], "member_index": [],
              "member_row": [], "member_share": []}
    tests = []  # (finding, outcomes): every counterfactual, judged together at the end
    total = pooled.sum(0)
    for c, name in enumerate(class_names):
        progress.advance(1 if c else 0)  # the classes before this one are done
        idx = np.flatnonzero(pn == c)
        if not len(idx):  # a class no test image is predicted as (most of ImageNet's 1000 on a small set)
            continue
        entry = {"class": name, "index": c, "n": int(len(idx)), "clusters": []}
        result["classes"].append(entry)
        if len(idx) < options["min_class_images"]:
            entry["note"] = f"{len(idx)} images predicted as this class: too few to cluster (at least {options['min_class_images']})"
            continue
        s = spray(pooled[idx], options["neighbors"], options["max_clusters"], seed)
        entry.update(k=s["k"], eigenvalues=s["eigenvalues"])
        rest = total - pooled[idx].sum(0)
        reference = rest / rest.sum() if rest.sum() > 0 else None  # where the other classes' images put their relevance
        others_all = np.flatnonzero((pn != c) & (yn != c) & held_out)
        pending = {}
        for cl in describe(pooled[idx], s["labels"], obj, options, reference):
            members = idx[cl.pop("members")]
            suspects = cl.pop("suspects")
            region = cl.pop("region")
            arrays["cluster_maps"].append(cl.pop("mean_map"))
            arrays["cluster_class"].append(c)
            order = np.argsort(-pooled[members][:, region].sum(1), kind="stable")
            thumbs = np.zeros((options["examples"], H, W, 3), np.uint8)
            pick = members[order[:options["examples"]]]
            thumbs[:len(pick)] = x8[torch.as_tensor(pick)].permute(0, 2, 3, 1).numpy()
            arrays["cluster_thumbs"].append(thumbs)
            arrays["member_index"].extend(members.tolist())  # every member, for the evidence table
            arrays["member_row"].extend([len(arrays["cluster_maps"]) - 1] * len(members))
            arrays["member_share"].extend(pooled[members][:, region].sum(1).tolist())
            cl.update(region=region.astype(int).tolist(), n_thumbs=int(len(pick)), row=len(arrays["cluster_maps"]) - 1,
                      tests=[])
            entry["clusters"].append(cl)
            for sus in suspects:  # one test per distinct region of the class: the cluster that relies on it most
                key = sus["region"].tobytes()
                if key not in pending or sus["member_share"] > pending[key][0]["member_share"]:
                    pending[key] = (sus, cl, members)
        for sus, cl, members in pending.values():
            cells = sus["region"]
            control = None if sus["shape"] == "border" else control_region(cells, rng, obj)  # a ring cannot move
            mask = pixel_mask(cells, H, W)
            cmask = None if control is None else pixel_mask(control, H, W)
            source = int(members[np.argmax(pooled[members][:, cells].sum(1))])
            others = rng.permutation(others_all)[:options["paste_images"]]
            test_members = members[held_out[members]]
            removed = (test_members if len(test_members) else members)[:options["paste_images"]]
            finding = {"kind": "region", "class": name, "class_index": c, "cluster": cl["cluster"], "size": cl["size"],
                       "shape": sus["shape"], "region": cells.astype(int).tolist(),
                       "control_region": None if control is None else control.astype(int).tolist(),
                       "area": float(mask.mean()), "box": list(box_of(cells, H, W)), "member_share": sus["member_share"],
                       "enrichment": sus["enrichment"], "object_frequency": sus["object_frequency"], "row": cl["row"]}
            log.info("%s: testing the %s region of cluster %d (%d images pasted into, %d inpainted)", name, sus["shape"],
                     cl["cluster"], len(others), len(removed))
            out = region_test(net, x, c, source, removed, others, mask, cmask, batch)
            tests.append((finding, out, others, removed))
            cl["tests"].append(sus["shape"])
    result["n_classes_analysed"] = sum(1 for e in result["classes"] if "k" in e)
    progress.task("searching the training images for global cues")
    result["global"] = global_search(net, x, pn, yn, held_out, class_names, options, train, batch, seed, rng, tests)
    result["flagged"] = judge_tests(tests, x8, arrays, options, seed)
    result["n_tested"] = len(tests)
    return result, arrays


def global_search(net, x, pn, yn, held_out, class_names, options, train, batch, seed, rng, tests) -> dict:
    """The global suspects (class x property) of the training images, the strongest `properties.max_tests` tested."""
    if not options["properties"]["enabled"]:
        return {"searched": False, "why": "clever_hans.properties.enabled is false"}
    if train is None or not len(train[0]):
        return {"searched": False, "why": "no training images (clever_hans.train_images is 0, or the dataset has none)"}
    xt, yt = train
    xt = xt.float().div(255)
    found = global_cues.suspects(xt, yt.numpy(), len(class_names), options["properties"]["min_effect"])
    searched = global_cues.properties_for(xt)
    tested = []
    for sus in found[:options["properties"]["max_tests"]]:
        c = sus["class_index"]
        others = rng.permutation(np.flatnonzero((pn != c) & (yn != c) & held_out))[:options["paste_images"]]
        members = np.flatnonzero((pn == c) & held_out)[:options["paste_images"]]
        finding = {"kind": "property", "class": class_names[c], "class_index": c, "cluster": None, "size": int(len(members)),
                   "shape": sus["property"], **{k: sus[k] for k in ("effect", "class_mean", "others_mean")}}
        log.info("%s: testing its %s (standardised difference %.1f against the other classes)", class_names[c],
                 sus["property"], sus["effect"])
        out = property_test(net, x, c, members, others, sus, batch, seed)
        finding.update({k: sus[k] for k in sus if k.endswith(("strength", "reached", "_from"))})
        tests.append((finding, out, others, members))
        tested.append(f"{class_names[c]}: {sus['property']}")
    return {"searched": True, "properties": searched, "n_train": int(len(xt)), "min_effect": options["properties"]["min_effect"],
            "suspects": [{k: (class_names[v] if k == "class_index" else v) for k, v in s.items()} for s in found],
            "tested": tested}


def judge_tests(tests, x8, arrays, options, seed) -> list[dict]:
    """Every counterfactual's rates, and its gain over its control with a paired interval at the level corrected
    for the number of tests; the findings, highest gain first, with their evidence images."""
    level = 1 - (1 - stats.LEVEL) / max(len(tests), 1)
    k = options["examples"]
    out = []
    for finding, o, others, members in tests:
        finding.update({key: stats.proportion(int(o[key].sum()), len(o[key])) for key in ("paste", "remove", "control_remove")})
        gains = {name: stats.paired_difference(o["paste"].astype(float), flips.astype(float), seed=seed, level=level)
                 for name, flips in o["controls"].items()}
        name = min(gains, key=lambda k: np.inf if gains[k]["value"] is None else gains[k]["value"])  # the stronger control
        finding["control"], finding["gain"] = name, gains[name]
        finding["control_paste"] = stats.proportion(int(o["controls"][name].sum()), len(o["controls"][name]))
        finding["controls"] = {k: float(v.mean()) if len(v) else None for k, v in o["controls"].items()}
        finding["remove_gain"] = stats.paired_difference(o["remove"].astype(float), o["control_remove"].astype(float),
                                                         seed=seed, level=level)
        finding["level"] = level
        pick_p = np.argsort(~o["paste"], kind="stable")[:k]
        pick_r = np.argsort(~o["remove"], kind="stable")[:k]
        finding["evidence_preds"] = {"paste": o["paste_pred"][pick_p].tolist(), "remove": o["remove_pred"][pick_r].tolist()}
        finding["evidence_row"] = len(arrays["evidence"])
        arrays["evidence"].append(_evidence(x8, others[pick_p], o["pasted"][torch.as_tensor(pick_p)],
                                            members[pick_r], o["removed"][torch.as_tensor(pick_r)], k))
        out.append(finding)
    return sorted(out, key=lambda f: -(f["gain"]["value"] if f["gain"]["value"] is not None else -np.inf))


def _evidence(x8, others, pasted, members, removed, k) -> np.ndarray:
    """(4, k, H, W, 3) uint8: images of other classes before and after the paste, members before and after
    the removal (padded with zeros)."""
    to8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
    H, W = x8.shape[-2:]
    out = np.zeros((4, k, H, W, 3), np.uint8)
    for row, imgs in enumerate((x8[torch.as_tensor(others, dtype=torch.long)].permute(0, 2, 3, 1).numpy(), to8(pasted),
                                x8[torch.as_tensor(members, dtype=torch.long)].permute(0, 2, 3, 1).numpy(), to8(removed))):
        out[row, :len(imgs)] = imgs
    return out


def run_clever_hans(model_path, manifest, options: dict, seed: int, device: str, threads: int, out) -> dict:
    t0 = time.time()
    model, spec, net, dev = pixel_model(model_path, seed, device, threads, frozen=True)
    x8, y, paths = robustness_images(manifest, spec, options["max_images"], seed)
    train = None
    if options["train_images"]:
        xt, yt, train_paths = robustness_images(manifest, spec, options["train_images"], seed, split="train")
        train = (xt, yt) if len(xt) else None
        paths = paths + (train_paths if train else [])
    result, arrays = analyse(net, x8, y, list(spec["class_names"]), options, seed, dev, train)
    result["class_names"] = list(spec["class_names"])
    result["seconds"] = round(time.time() - t0, 2)
    H, W = x8.shape[-2:]
    e = options["examples"]
    save_npz(out, result,
             cluster_maps=np.array(arrays["cluster_maps"], np.float32).reshape(-1, options["grid"], options["grid"]),
             cluster_class=np.array(arrays["cluster_class"], np.int64),
             cluster_thumbs=np.array(arrays["cluster_thumbs"], np.uint8).reshape(-1, e, H, W, 3),
             evidence=np.array(arrays["evidence"], np.uint8).reshape(-1, 4, e, H, W, 3),
             paths=np.array(paths, dtype=str), labels=np.concatenate([y.numpy(), train[1].numpy()]) if train else y.numpy(),
             member_index=np.array(arrays["member_index"], np.int64), member_row=np.array(arrays["member_row"], np.int64),
             member_share=np.array(arrays["member_share"], np.float32))
    for f in result["flagged"]:
        g = f["gain"]
        log.info("tested: %s, %s (%s): paste flip %.2f, control %.2f, gain %.2f [%s, %s]", f["class"], f["shape"],
                 f["kind"], f["paste"]["value"] or 0, f["control_paste"]["value"] or 0, g["value"] or 0, g["ci_low"], g["ci_high"])
    log.info("SpRAy over %d images with %s: %d classes analysed; %d suspect(s) tested (%.1fs)", result["n"],
             result["method"], result["n_classes_analysed"], len(result["flagged"]), result["seconds"])
    return result
