"""Transfer learning: frozen backbone (head only), then all layers at a lower rate; early stopping."""
from __future__ import annotations

import copy
import csv
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from cvaudit import CvauditError
from cvaudit.core import progress
from cvaudit.core.files import atomic_path, write_json
from cvaudit.core.manifest import image_loader, manifest_classes, read_manifest
from cvaudit.core.registry import is_export_arch
from cvaudit.data.sources import imagenet_categories
from cvaudit.net.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _head_name,
    build_model,
    normalisation,
    resolve_device,
    save_model,
)
from cvaudit.net.pixel_space import seed_everything
from cvaudit.net.transforms import eval_transform, train_transform

log = logging.getLogger("cvaudit.model.train_model")
HISTORY_COLUMNS = ["phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def model_classes(model_cfg: dict) -> list[str] | None:
    """The output order a user gave (config key models.*.class_names, or classes_file: one name a line)."""
    if model_cfg.get("class_names"):
        return [str(c) for c in model_cfg["class_names"]]
    if model_cfg.get("classes_file"):
        path = Path(model_cfg["classes_file"])
        if not path.is_file():
            raise CvauditError(f"config key models.*.classes_file: {path} not found")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(set(names)) != len(names) or not names:
            raise CvauditError(f"{path} (config key models.*.classes_file): needs one class name a line, each once")
        return names
    return None


def make_spec(model_cfg: dict, classes: list[str]) -> dict:
    """The saved description of a model: enough to rebuild it without the config."""
    audit_as_is = model_cfg["train"] is False
    own = model_classes(model_cfg)
    if own and not audit_as_is:
        raise CvauditError("config keys models.*.class_names / classes_file name the outputs of a model audited as it "
                           "is (train: false); a model trained here takes the dataset's classes: remove them")
    imagenet_head = audit_as_is and model_cfg["weights"].startswith(("packaged:", "torchvision:"))
    hf = _hf_settings(model_cfg) if model_cfg["arch"].startswith("hf:") else None
    if is_export_arch(model_cfg["arch"]):
        _check_export(model_cfg)
    names = own or (hf["class_names"] if hf and audit_as_is else None) or (
        imagenet_categories() if imagenet_head else list(classes))
    spec = {"arch": model_cfg["arch"], "arch_options": model_cfg.get("arch_options") or {},
            "weights": model_cfg["weights"], "input_size": model_cfg["input_size"],
            "num_classes": len(names), "class_names": names, "keep_head": audit_as_is,
            "resize": model_cfg.get("resize", "stretch"),
            "class_order": "config" if own else ("imagenet" if imagenet_head else "dataset")}
    if hf:  # the folder's own preprocessing; its class names when audited as it is
        spec.update(resize=hf["resize"], normalisation=hf["normalisation"], preprocessing=hf["preprocessing"])
        if hf.get("resize_short"):
            spec["resize_short"] = hf["resize_short"]
        if audit_as_is and not own:
            spec["class_order"] = "config"  # the model's id2label, matched to the dataset's classes by name
    if model_cfg.get("normalisation"):
        spec["normalisation"] = model_cfg["normalisation"]
    if is_export_arch(model_cfg["arch"]):  # what the export is given, as the report states it
        norm = model_cfg.get("normalisation") or {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        source = "models.*.normalisation" if model_cfg.get("normalisation") else "ImageNet's, the default: set models.*.normalisation"
        how = "the shorter side resized, then the central crop" if spec["resize"] == "center_crop" else "resized"
        spec["preprocessing"] = (f"{how} to {spec['input_size']} x {spec['input_size']} px; normalised with mean "
                                 f"{norm['mean']} and std {norm['std']} ({source})")
    return spec


def _check_export(model_cfg: dict) -> None:
    """An export is audited as it is, with its own weights."""
    arch = model_cfg["arch"]
    if model_cfg["train"] is not False:
        raise CvauditError(f"config key models.*.train: a model given as {arch} is an export without gradients and "
                           "cannot be fine-tuned; set train: false (it is audited as it is)")
    if model_cfg["weights"] != "none":
        raise CvauditError(f"config key models.*.weights ({model_cfg['weights']}): a model given as {arch} carries its "
                           "own weights; remove the key")


def _hf_settings(model_cfg: dict) -> dict:
    """A Hugging Face folder's class names (id2label, for a model audited as it is) and preprocessing
    (preprocessor_config.json, or models.*.normalisation and resize where the folder has none), checked."""
    from cvaudit.net import hf
    arch, s = model_cfg["arch"], model_cfg["input_size"]
    if model_cfg["weights"] != "none":
        raise CvauditError(f"config key models.*.weights ({model_cfg['weights']}): a model given as {arch} carries its "
                           "own weights (the folder's model.safetensors); remove the key")
    config, processor = hf.read_folder(arch)
    hf.weights_file(arch)
    if processor is None and model_cfg.get("normalisation"):
        out = {"resize": model_cfg.get("resize", "stretch"), "normalisation": model_cfg["normalisation"]}
        source = "models.*.normalisation and resize"
    else:
        out = hf.processor_settings(processor, s, arch)
        source = str(hf.folder_of(arch) / "preprocessor_config.json")
    how = (f"the shorter side resized to {out['resize_short']} px, then the central {s} x {s} px"
           if out["resize"] == "center_crop" else f"resized to {s} x {s} px")
    mean, std = out["normalisation"]["mean"], out["normalisation"]["std"]
    out["preprocessing"] = f"{how}; normalised with mean {mean} and std {std} (from {source})"
    own_names = model_cfg["train"] is False and not model_classes(model_cfg)
    out["class_names"] = hf.class_names(config, arch) if own_names else None
    return out


def _freeze_backbone(model: nn.Module, frozen: bool) -> list[nn.Parameter]:
    head = _head_name(model)
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad = (not frozen) or name.startswith(head + ".")
        if p.requires_grad:
            trainable.append(p)
    return trainable


def _set_train_mode(model: nn.Module, frozen: bool, freeze_bn: bool) -> None:
    """Train mode, except BatchNorm layers that are frozen (head phase) or, with freeze_bn, all of them:
    pretrained BatchNorm keeps its ImageNet statistics so fine-tuning does not undo the head phase."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if freeze_bn or not any(p.requires_grad for p in m.parameters()):
                m.eval()


@torch.no_grad()
def check_input_size(model: nn.Module, size: int, key: str, num_classes: int | None = None) -> None:
    """Refuse an input size the network cannot take (pooling down to nothing), naming the smallest that works;
    and, given num_classes, a network whose outputs are not one per class (a factory that ignores num_classes
    would leave probability on outputs no class owns)."""
    shape = {}

    def works(s: int) -> bool:
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, 3, s, s))
            shape["out"] = tuple(getattr(out, "shape", ()))
            return True
        except RuntimeError:
            return False

    was = model.training
    model.eval()
    try:
        if works(size):
            got = shape["out"]
            if num_classes is not None and (len(got) != 2 or got[1] != num_classes):
                raise CvauditError(f"config key {key.rsplit('.', 1)[0]}.arch: the network gives "
                                   f"{got[1] if len(got) == 2 else 'outputs of shape ' + str(got)} outputs for "
                                   f"{num_classes} classes; it must give one logit per class (a factory must build its "
                                   "head with the num_classes it is given)")
            return
        lo, hi = size, size
        while not works(hi):
            lo, hi = hi, hi * 2
            if hi > 4096:
                raise CvauditError(f"config key {key}: the network takes no input size up to 4096 px; check "
                                   "the architecture and its options") from None
        while hi - lo > 1:  # the smallest size that works, between lo (fails) and hi (works)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if works(mid) else (mid, hi)
        raise CvauditError(f"config key {key}: {size} px is too small for this network (its feature maps shrink "
                           f"to nothing); the smallest input size that works is {hi}")
    finally:
        model.train(was)


def precise_bn(model: nn.Module, loader, device, max_batches: int = 200) -> int:
    """Recompute every BatchNorm layer's running statistics over the training images (no augmentation),
    as the cumulative average of batch statistics, for the weights kept (Wu & Johnson, "Rethinking
    'Batch' in BatchNorm": the running averages of a few tracked steps are stale, and a model evaluated
    with them can collapse onto one class). Returns the batches used (0: no BatchNorm)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.eval()
    for m in bns:
        m.train()
    n = 0
    with torch.no_grad():
        for x, _ in loader:
            if len(x) < 2:  # a batch of one has no batch statistics
                continue
            model(x.to(device))
            n += 1
            if n >= max_batches:
                break
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()
    return n


def _validate(model, loader, device, amp) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return (loss_sum / n, correct / n) if n else (float("nan"), float("nan"))


def train_model(name: str, model_cfg: dict, manifest: str | Path, seed: int, device: str, threads: int,
                out_model: str | Path, out_history: str | Path, out_metrics: str | Path) -> dict:
    t0 = time.time()
    seed_everything(seed, threads)
    dev = resolve_device(device)
    spec = make_spec(model_cfg, manifest_classes(manifest))
    model = build_model(spec)
    check_input_size(model, spec["input_size"], f"models.{name}.input_size", spec["num_classes"])
    spec["mean"], spec["std"] = normalisation(spec, model)
    if callable(getattr(model, "saved_config", None)):  # a Hugging Face model: rebuilt from its config, no folder
        spec["hf_config"] = model.saved_config()
    model.to(dev)
    tcfg = model_cfg["train"]
    metrics = {"model": name, "trained": tcfg is not False, "device": str(dev), "seed": seed,
               "arch": spec["arch"], "weights": spec["weights"], "n_params": sum(p.numel() for p in model.parameters())}
    if spec.get("preprocessing"):
        metrics["preprocessing"] = spec["preprocessing"]
    if spec["arch"].startswith("hf:"):  # the weights are the folder's
        from cvaudit.net.hf import weights_file
        metrics["weights"] = str(weights_file(spec["arch"]))
    if is_export_arch(spec["arch"]):  # the weights are inside the export
        metrics["weights"] = spec["arch"].split(":", 1)[1]

    if tcfg is False:
        log.info("%s: train: false — saving the model as it is (%d classes)", name, spec["num_classes"])
        if spec["class_order"] == "dataset" and (spec["weights"] != "none" or is_export_arch(spec["arch"])):
            log.warning("%s: no models.%s.class_names given: its outputs are taken to be the dataset's classes in "
                        "sorted order %s; if it was trained with another order, every number is wrong", name,
                        name, spec["class_names"][:10])
        save_model(model, spec, out_model)
        _write_history(out_history, [])
        metrics.update(seconds=round(time.time() - t0, 2))
        write_json(out_metrics, metrics)
        return metrics

    train_rows, val_rows = read_manifest(manifest, "train"), read_manifest(manifest, "val")
    if not train_rows:
        raise CvauditError(f"model '{name}': dataset '{model_cfg['dataset']}' has no training images; "
                           f"lower config key datasets.{model_cfg['dataset']}.split.test/val")
    bs = tcfg["batch_size"]
    train_dl = image_loader(train_rows, spec["class_names"], train_transform(spec, tcfg["augment"]), bs, dev,
                            shuffle=True, seed=seed)
    val_dl = (image_loader(val_rows, spec["class_names"], eval_transform(spec), bs * 2, dev, seed=seed)
              if val_rows else None)
    if val_dl is None:
        log.warning("%s: no validation split — early stopping is off and the last epoch is kept", name)

    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    pretrained = spec["weights"] != "none" or spec["arch"].startswith("hf:")  # a Hugging Face folder holds weights
    if pretrained:
        phases = [("head", tcfg["head_epochs"], tcfg["lr"], True), ("finetune", tcfg["finetune_epochs"], tcfg["finetune_lr"], False)]
    else:  # nothing to transfer: all layers at `lr` for the same total number of epochs
        phases = [("scratch", tcfg["head_epochs"] + tcfg["finetune_epochs"], tcfg["lr"], False)]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tcfg["label_smoothing"])

    history, best = [], {"val_loss": float("inf"), "state": None, "epoch": 0, "phase": None, "val_acc": None}
    epoch_total = 0
    progress.task(f"training {name}", sum(max(0, p[1]) for p in phases) * len(train_dl), "batches")
    for phase, epochs, lr, frozen in phases:
        if epochs <= 0:
            continue
        params = _freeze_backbone(model, frozen)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=tcfg["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(train_dl))
        stale = 0
        for epoch in range(1, epochs + 1):
            te = time.time()
            _set_train_mode(model, frozen, pretrained and tcfg["freeze_bn"])
            loss_sum, correct, n = 0.0, 0, 0
            bar = tqdm(train_dl, desc=f"{name} {phase} {epoch}/{epochs}", file=sys.stderr, leave=False,
                       mininterval=5 if not sys.stderr.isatty() else 0.1, disable=None)
            for x, y in bar:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.autocast(dev.type, enabled=amp):
                    logits = model(x)
                    loss = loss_fn(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                n += len(y)
                progress.advance()
                bar.set_postfix(loss=f"{loss_sum / n:.3f}")
            epoch_total += 1
            val_loss, val_acc = _validate(model, val_dl, dev, amp) if val_dl else (float("nan"), float("nan"))
            row = {"phase": phase, "epoch": epoch_total, "train_loss": loss_sum / n, "train_acc": correct / n,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": round(time.time() - te, 2)}
            history.append(row)
            log.info("%s %s epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f (%.1fs)", name, phase,
                     epoch_total, row["train_loss"], row["train_acc"], val_loss, val_acc, row["seconds"])
            if val_dl is None or val_loss < best["val_loss"]:
                best.update(val_loss=val_loss, val_acc=val_acc, epoch=epoch_total, phase=phase,
                            state=copy.deepcopy(model.state_dict()))
                stale = 0
            else:
                stale += 1
                if stale >= tcfg["patience"]:
                    log.info("%s: early stop in phase %s after %d epochs without improvement", name, phase, stale)
                    break
    if best["state"] is None:
        raise CvauditError(f"model '{name}': no training epoch ran; set config key models.{name}.train.head_epochs "
                           "or finetune_epochs above 0")
    model.load_state_dict(best["state"])
    _freeze_backbone(model, False)
    if tcfg.get("precise_bn", True) and not (pretrained and tcfg.get("freeze_bn", True)):
        stats_dl = image_loader(train_rows, spec["class_names"], eval_transform(spec), bs, dev, shuffle=True,
                                seed=seed)
        used = precise_bn(model, stats_dl, dev)
        if used:
            val_loss, val_acc = _validate(model, val_dl, dev, amp) if val_dl else (float("nan"), float("nan"))
            metrics["precise_bn"] = {"batches": used, "val_loss_before": best["val_loss"], "val_loss": val_loss,
                                     "val_acc_before": best["val_acc"], "val_acc": val_acc}
            log.info("%s: BatchNorm statistics recomputed over %d training batches: val loss %.4f -> %.4f, "
                     "acc %.3f -> %.3f", name, used, best["val_loss"], val_loss, best["val_acc"], val_acc)
    save_model(model, spec, out_model)
    _write_history(out_history, history)
    metrics.update(epochs_run=epoch_total, best_epoch=best["epoch"], best_phase=best["phase"],
                   best_val_loss=best["val_loss"], best_val_acc=best["val_acc"], n_train=len(train_rows),
                   n_val=len(val_rows), seconds=round(time.time() - t0, 2), settings=tcfg)
    write_json(out_metrics, metrics)
    return metrics


def _write_history(path, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        w.writeheader()
        w.writerows(rows)
