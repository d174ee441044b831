"""Adversarial examples: accuracy against the L-inf radius epsilon, judged on the strongest attack.

Attacks come from torchattacks (a maintained implementation of each paper's algorithm):
- fgsm: one step of eps along the sign of the cross-entropy gradient (Goodfellow et al.);
- pgd: Madry et al.'s PGD: a uniform random start in the eps ball, `steps` steps of 2.5 * eps / steps,
  `restarts` random restarts, per image the first restart that fools the model;
- square: Andriushchenko et al.'s gradient-free Square attack alone (the one an export is judged on);
- autoattack: an ensemble in the spirit of AutoAttack (Croce & Hein 2020), run as a cascade on the
  images still classified right: APGD on cross-entropy, targeted APGD on the DLR loss, then Square (a
  gradient-free random search that catches gradient masking). Per image, the worst case.

FGSM and PGD stay as the course's teaching curves; the robust_accuracy verdict takes the per-image
worst case over every attack run. The autoattack job also runs Carlini et al.'s gradient-masking
checks (see masking_checks).

Randomised attacks are seeded per batch of `batch` images from the batch's position in the whole
sample, so a run is reproducible, and a sharded run equals one job when shard_size is a multiple of
the batch size (FGSM is deterministic and always equal).
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from cvaudit import CvauditError
from cvaudit.core import progress
from cvaudit.core.files import save_npz
from cvaudit.core.registry import ATTACKS, load
from cvaudit.net.models import auto_batch
from cvaudit.net.pixel_space import image_seed, pixel_model, predict
from cvaudit.net.sample import _slice, robustness_images, robustness_sample_size

log = logging.getLogger("cvaudit.robust.adversarial")
COMPONENTS = ("fgsm", "apgd_ce", "apgd_t", "square")  # the autoattack job's per-image record, in cascade order


def _fooled(net, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(adv).argmax(1) != y


def fgsm(net, x, y, eps, options, seed):
    import torchattacks
    return torchattacks.FGSM(net, eps=eps)(x, y), {}


def pgd(net, x, y, eps, options, seed):
    """Madry et al.: random start, steps of 2.5 * eps / steps, restarts; per image the first fooling restart."""
    import torchattacks
    steps, restarts = options["pgd"]["steps"], options["pgd"]["restarts"]
    atk = torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    best, left = x.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
    for r in range(restarts):
        if not left.any():
            break
        torch.manual_seed(seed * 7919 + r)
        idx = left.nonzero().flatten()
        adv = atk(x[idx], y[idx])
        best[idx] = adv
        left[idx[_fooled(net, adv, y[idx])]] = False
    return best, {}


def square(net, x, y, eps, options, seed):
    """Square (Andriushchenko et al. 2020) alone: a random search over square patches at the L-inf budget,
    `autoattack.square_queries` queries per image. It reads only the model's outputs, so it is the attack an
    export without gradients is judged on."""
    import contextlib
    import io

    import torchattacks
    with contextlib.redirect_stdout(io.StringIO()):  # torchattacks prints when the net has no parameters (an export)
        atk = torchattacks.Square(net, norm="Linf", eps=eps, n_queries=options["autoattack"]["square_queries"],
                                  n_restarts=1, seed=seed)
    atk.set_device(x.device)
    return atk(x, y), {}


def _apgd(net, eps, steps, restarts, seed, loss="ce"):
    import torchattacks
    return torchattacks.APGD(net, norm="Linf", eps=eps, steps=steps, n_restarts=restarts, seed=seed, loss=loss)


def autoattack(net, x, y, eps, options, seed, num_classes: int | None = None):
    """The cascade APGD-CE -> APGD-T (DLR; needs at least 4 classes) -> Square on the images not yet
    fooled; FGSM is also run on every image, for the masking check 'iterative attacks are never weaker
    than single-step ones'.
    Returns the worst-case images and, per component, which images it fooled (attempted on survivors)."""
    import torchattacks
    o = options["autoattack"]
    with torch.no_grad():
        num_classes = num_classes or int(net(x[:1]).shape[1])
    single = fgsm(net, x, y, eps, options, seed)[0]
    fooled = {"fgsm": _fooled(net, single, y)}
    best = x.clone()
    left = ~_fooled(net, x, y)  # images already wrong need no attack
    targets = max(1, min(o["target_classes"], num_classes - 1))
    stages = [("apgd_ce", lambda: _apgd(net, eps, o["steps"], o["restarts"], seed)),
              ("apgd_t", lambda: torchattacks.APGDT(net, norm="Linf", eps=eps, steps=o["steps"], n_restarts=o["restarts"],
                                                     seed=seed, n_classes=targets + 1)),
              ("square", lambda: torchattacks.Square(net, norm="Linf", eps=eps, n_queries=o["square_queries"],
                                                     n_restarts=1, seed=seed))]
    for name, make in stages:
        f = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        if name == "apgd_t" and num_classes < 4:  # the targeted DLR loss needs 4 classes; skipped, recorded as no hits
            fooled[name] = f
            continue
        if left.any():
            idx = left.nonzero().flatten()
            adv = make()(x[idx], y[idx])
            hit = _fooled(net, adv, y[idx])
            best[idx[hit]] = adv[hit]
            f[idx[hit]] = True
            left[idx[hit]] = False
        fooled[name] = f
    only_fgsm = left & fooled["fgsm"]  # the worst case over the whole ensemble, FGSM included
    best[only_fgsm] = single[only_fgsm]
    return best, fooled


def attack_batch(attack: str, net, x: torch.Tensor, y: torch.Tensor, eps: float, options: dict, seed: int = 0):
    """Adversarial images within L-inf radius eps (pixel units in [0, 1]) and, for autoattack, which
    component fooled which image."""
    if attack not in ATTACKS:
        raise CvauditError(f"unknown attack '{attack}' (config key robustness.adversarial.attacks); "
                           f"available: {', '.join(ATTACKS)}")
    if eps == 0 or len(x) == 0:
        return x.clone(), {}
    with torch.enable_grad():
        adv, parts = load(ATTACKS[attack].ref)(net, x, y, eps, options, seed)
    return adv.detach(), {k: v.cpu().numpy() for k, v in parts.items()}


MASKING_UNITS = 2  # the masking checks cost about two image-epsilon pairs of the attack per image (measured)


def _batch_seed(seed: int, first: int) -> int:
    return image_seed(seed, first) % (2 ** 31)


def _masking_extras(net, x, y, options, seed, start, batch) -> dict:
    """Per image: still right under APGD-CE at the large epsilon, and fooled by APGD-CE with more_steps
    times the steps at check_epsilon (the masking checks 'accuracy reaches about 0' and 'more steps do
    not help much')."""
    o, m = options["autoattack"], options["masking"]
    large_ok, more = [], []
    for i in range(0, len(x), batch):
        xb, yb, s = x[i:i + batch], y[i:i + batch], _batch_seed(seed, start + i)
        with torch.enable_grad():
            adv = _apgd(net, m["large_epsilon"], o["steps"], 1, s)(xb, yb)
            large_ok.append((~_fooled(net, adv, yb)).cpu().numpy())
            adv = _apgd(net, options["check_epsilon"], o["steps"] * m["more_steps"], o["restarts"], s)(xb, yb)
            more.append(_fooled(net, adv, yb).cpu().numpy())
    cat = lambda a: np.concatenate(a) if a else np.zeros(0, bool)  # noqa: E731
    return {"large_correct": cat(large_ok), "more_steps_fooled": cat(more)}


# Model batches attacked at a time: the sample stays uint8 and only this many batches (with their
# adversarial copies) are floats on the device, so a stage's memory does not grow with max_images.
# Each batch keeps its own seed (_batch_seed of its first image), so chunks change no result.
CHUNK_BATCHES = 8


def part(attack: str, job: dict, start: int = 0, stop: int | None = None) -> tuple[dict, dict]:
    """Per image of the sample [start, stop): clean and adversarial predictions at every epsilon, the
    smallest flipping epsilon, example candidates (the first `examples` fooled and not fooled at
    example_epsilon, with their adversarial images) and, for autoattack, each component's hits and the
    masking extras. job (cvaudit.core.shards): model, data (the manifest), options (the part of
    robustness.adversarial this attack reads, cvaudit.core.registry.attack_options), seed, device, threads."""
    t0 = time.time()
    options, seed, manifest = job["options"], job["seed"], job["data"]
    model, spec, net, dev = pixel_model(job["model"], seed, job["device"], job["threads"], frozen=True)
    n_total = robustness_sample_size(manifest, options["max_images"])
    start, stop = _slice(n_total, start, stop)
    x8, y, paths = robustness_images(manifest, spec, options["max_images"], seed, start, stop)
    batch = auto_batch(x8.shape[-2], x8.shape[-1], dev)
    eps_list = sorted(float(e) for e in options["epsilons"])
    chunk = batch * CHUNK_BATCHES
    masking = MASKING_UNITS if attack == "autoattack" else 0  # its masking checks, in attack-sized units per image
    progress.task(f"{attack}" + (" and its masking checks" if masking else ""), len(x8) * (len(eps_list) + masking),
                  "image-epsilon pairs")
    pieces = [_attack_chunk(attack, net, x8[lo:lo + chunk], y[lo:lo + chunk], dev, eps_list, options, seed,
                            start + lo, batch) for lo in range(0, len(x8), chunk)]
    if not pieces:  # an empty shard
        pieces = [_attack_chunk(attack, net, x8, y, dev, eps_list, options, seed, start, batch)]
    arrays = {k: np.concatenate([p[k] for p in pieces], axis=1 if k == "preds" or k.startswith("hit_") else 0)
              for k in pieces[0] if not k.startswith("cand_")}
    show = options["examples"]  # the first `show` fooled and not fooled of the part, as one chunk would pick
    fooled = np.concatenate([p["cand_fooled"] for p in pieces])
    pick = np.concatenate([np.flatnonzero(fooled)[:show], np.flatnonzero(~fooled)[:show]]).astype(np.int64)
    arrays.update({k: np.concatenate([p[k] for p in pieces])[pick] for k in pieces[0] if k.startswith("cand_")})
    for eps, p in zip(eps_list, arrays["preds"]):
        log.info("%s: eps %.4f, accuracy %.3f (%d images)", attack, eps, float((p == y.numpy()).mean())
                 if len(y) else float("nan"), len(y))
    meta = {"start": start, "n_total": n_total, "epsilons": eps_list, "class_names": spec["class_names"],
            "seconds": time.time() - t0}
    return meta, {**arrays, "targets": y.numpy(), "images": x8.permute(0, 2, 3, 1).numpy(),
                  "paths": np.array(paths, dtype=str)}


def _attack_chunk(attack: str, net, x8: torch.Tensor, y: torch.Tensor, dev, eps_list: list[float], options: dict,
                  seed: int, first: int, batch: int) -> dict:
    """The attack on the images x8 (uint8), the first of which is image `first` of the sample: per-image
    arrays, and the chunk's example candidates (cand_*: its first `examples` fooled and not fooled)."""
    x, yd = x8.to(dev).float().div(255), y.to(dev)
    clean_pred, clean_conf = predict(net, x, batch)
    preds, flipped_at = [], np.full(len(x), np.inf)
    hits = {c: [] for c in COMPONENTS} if attack == "autoattack" else {}
    show = options["examples"]
    cand = {"index": np.zeros(0, np.int64), "fooled": np.zeros(0, bool),
            "adv": np.zeros((0,) + tuple(x8.shape[2:]) + (3,), np.uint8), "pred": np.zeros(0, np.int64),
            "conf": np.zeros(0, np.float32)}
    for eps in eps_list:
        advs, comp = [], {c: [] for c in hits}
        for i in range(0, len(x), batch):
            adv, parts = attack_batch(attack, net, x[i:i + batch], yd[i:i + batch], eps, options,
                                      _batch_seed(seed, first + i))
            advs.append(adv)
            progress.advance(len(adv))
            for c in comp:
                comp[c].append(parts.get(c, np.zeros(len(adv), bool)))
        adv = torch.cat(advs) if advs else x.clone()
        for c in hits:
            hits[c].append(np.concatenate(comp[c]) if comp[c] else np.zeros(0, bool))
        p, c = predict(net, adv, batch) if len(x) else (clean_pred, clean_conf)
        preds.append(p.numpy())
        changed = (p != clean_pred).numpy()
        flipped_at[changed & np.isinf(flipped_at)] = eps
        if eps == float(options["example_epsilon"]):
            fooled = ((clean_pred == y) & (p != y)).numpy()
            local = np.concatenate([np.flatnonzero(fooled)[:show], np.flatnonzero(~fooled)[:show]]).astype(np.int64)
            cand = {"index": local + first, "fooled": fooled[local],
                    "adv": (adv[local].cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
                    "pred": p[local].numpy(), "conf": c[local].numpy()}
    extra = {}
    if attack == "autoattack":
        extra = {f"hit_{c}": np.array(v, dtype=bool).reshape(len(eps_list), len(x)) for c, v in hits.items()}
        extra.update(_masking_extras(net, x, yd, options, seed, first, batch))
        progress.advance(MASKING_UNITS * len(x))
    return {"clean_pred": clean_pred.numpy(), "clean_conf": clean_conf.numpy(), "flip_epsilon": flipped_at,
            "preds": np.array(preds, dtype=np.int64).reshape(len(eps_list), len(x)), **extra,
            **{f"cand_{k}": v for k, v in cand.items()}}


def masking_checks(arrays: dict, options: dict) -> list[dict]:
    """Carlini et al. (2019)'s signs of gradient masking, each a line that passes or fails:
    white-box accuracy reaches about 0 at a large epsilon; the iterative attack is never weaker than the
    single-step one; the gradient-free attack is never stronger than the white-box ones; more steps do
    not help much. `tolerance` (a share of the images, at least one image) absorbs the odd borderline image."""
    m = options["masking"]
    eps = arrays["epsilons"]
    correct = arrays["clean_pred"] == arrays["targets"]
    n = len(correct)
    tol = max(1, math.ceil(m["tolerance"] * n))
    out = []
    acc_large = float(arrays["large_correct"].mean()) if n else None
    out.append({"name": "large_epsilon", "passed": acc_large is not None and acc_large <= m["max_accuracy"],
                "label": f"White-box accuracy reaches about 0 at eps = {m['large_epsilon']:g}",
                "detail": f"APGD-CE leaves {int(arrays['large_correct'].sum())} of {n} images right "
                          f"(allowed: {m['max_accuracy']:.0%})" + ("" if acc_large is None or acc_large <= m["max_accuracy"]
                                                                   else "; its gradients do not lead anywhere: masked, "
                                                                   "or too few steps")})
    weaker = [int((arrays["hit_fgsm"][k] & ~arrays["hit_apgd_ce"][k] & correct).sum()) for k in range(len(eps))]
    out.append({"name": "iterative_not_weaker", "passed": max(weaker, default=0) <= tol,
                "label": "The iterative attack is never weaker than the single-step one",
                "detail": "images FGSM fooled but APGD-CE did not, per eps: " +
                          ", ".join(f"{e:.4g}: {w}" for e, w in zip(eps, weaker)) + f" (allowed: {tol})"})
    square = [int(arrays["hit_square"][k].sum()) for k in range(len(eps))]
    out.append({"name": "gradient_free_not_stronger", "passed": max(square, default=0) <= tol,
                "label": "The gradient-free attack is never stronger than the white-box ones",
                "detail": "images only Square fooled (after APGD-CE and APGD-T), per eps: " +
                          ", ".join(f"{e:.4g}: {s}" for e, s in zip(eps, square)) + f" (allowed: {tol})"})
    k = [i for i, e in enumerate(eps) if abs(e - options["check_epsilon"]) < 1e-9]
    if k:
        base = arrays["hit_apgd_ce"][k[0]] & correct
        extra = int((arrays["more_steps_fooled"] & ~base & correct).sum())
        out.append({"name": "more_steps_little_gain", "passed": extra <= tol,
                    "label": f"{m['more_steps']}x more steps do not help much",
                    "detail": f"APGD-CE with {m['more_steps']}x the steps fools {extra} more image(s) at eps = "
                              f"{options['check_epsilon']:g} (allowed: {tol})" + (
                                  "" if extra <= tol else "; the attack has not converged: raise "
                                  "robustness.adversarial.autoattack.steps before trusting the robust accuracy")})
    return out


def merge(attack: str, job: dict, parts: list[tuple[dict, dict]], out) -> dict:
    """The adversarial stage's output (cvaudit.core.shards): accuracy against epsilon, flip epsilons, examples
    and (autoattack) the masking checks over the sample."""
    options = job["options"]
    loaded = [{**arrays, **meta} for meta, arrays in parts]
    cat = lambda k, axis=0: np.concatenate([p[k] for p in loaded], axis=axis)  # noqa: E731
    targets, clean_pred, flipped_at = cat("targets"), cat("clean_pred"), cat("flip_epsilon")
    preds = cat("preds", 1)
    eps_list = loaded[0]["epsilons"]
    acc = [float((p == targets).mean()) for p in preds]
    # examples: images the attack turned from right to wrong first, then the others (in sample order)
    ci, cf = cat("cand_index"), cat("cand_fooled")
    pick = np.concatenate([np.flatnonzero(cf), np.flatnonzero(~cf)])[:options["examples"]]
    idx = ci[pick]
    offsets = {int(p["start"]): p for p in loaded}

    def image(j):
        part = max((s for s in offsets if s <= j), default=0)
        return offsets[part]["images"][j - part]
    images = np.stack([image(int(j)) for j in idx]) if len(idx) else np.zeros((0,) + loaded[0]["images"].shape[1:], np.uint8)
    extra = {}
    if attack == "autoattack":
        extra = {f"hit_{c}": cat(f"hit_{c}", 1) for c in COMPONENTS}
        extra.update(large_correct=cat("large_correct"), more_steps_fooled=cat("more_steps_fooled"))
    result = {"attack": attack, "epsilons": eps_list, "accuracy": acc, "n": int(len(targets)),
              "clean_accuracy": float((clean_pred == targets).mean()), "options": options,
              "flipped_share": float(np.isfinite(flipped_at).mean()) if len(flipped_at) else 0.0,
              "median_flip_epsilon": float(np.median(flipped_at)) if len(flipped_at) and np.isfinite(np.median(flipped_at)) else None,
              "example_epsilon": float(options["example_epsilon"]), "class_names": loaded[0]["class_names"],
              "seconds": round(sum(p["seconds"] for p in loaded), 2), "shards": len(loaded)}
    if extra:
        result["masking"] = masking_checks({**extra, "epsilons": eps_list, "targets": targets,
                                            "clean_pred": clean_pred}, options)
        result["components"] = {c: [int(h.sum()) for h in extra[f"hit_{c}"]] for c in COMPONENTS}
    save_npz(out, result, flip_epsilon=flipped_at, targets=targets, clean_pred=clean_pred, preds=preds,
             clean_conf=cat("clean_conf"), example_index=idx, images=images,
             adv_images=cat("cand_adv")[pick], adv_pred=cat("cand_pred")[pick], adv_conf=cat("cand_conf")[pick],
             paths=cat("paths"), **extra)
    log.info("%s: accuracy %s over eps %s (%.1fs, %d part(s))", attack, np.round(acc, 3).tolist(), eps_list,
             result["seconds"], len(loaded))
    for chk in result.get("masking", []):
        log.info("masking check %s: %s (%s)", chk["name"], "pass" if chk["passed"] else "FAIL", chk["detail"])
    return result
