"""arch: ensemble — models of one dataset audited as one: the train_model job of an ensemble trains nothing; it
reads its members' saved models, checks that they see the same images and name the same classes in the same
order, and saves them together (cvaudit.net.models.Ensemble: the average of their probabilities)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from cvaudit import CvauditError
from cvaudit.core.files import write_json
from cvaudit.model.train_model import _write_history
from cvaudit.net.models import Ensemble, load_model, save_model

log = logging.getLogger("cvaudit.model.ensemble")
SAME = ("input_size", "resize")  # what makes the images a member sees; each normalises them its own way


def assemble(name: str, model_cfg: dict, members: dict[str, str | Path], out_model, out_history, out_metrics) -> dict:
    """Save the ensemble `name` of the models in `members` ({member: its model.safetensors}, in config order)."""
    t0 = time.time()
    loaded = {m: load_model(p) for m, p in members.items()}
    first, (_, spec0) = next(iter(loaded)), next(iter(loaded.values()))
    for m, (_, spec) in loaded.items():
        if spec["class_names"] != spec0["class_names"]:
            raise CvauditError(f"config key models.{name}.members: {m} and {first} name different classes or the same "
                               f"classes in another order ({spec['class_names'][:5]} vs {spec0['class_names'][:5]}); "
                               "an ensemble averages probabilities class by class, so its members need the same outputs")
        for key in SAME:
            if spec.get(key) != spec0.get(key) or (key == "input_size" and spec[key] != model_cfg[key]):
                raise CvauditError(f"config key models.{name}.members: {m} has {key} {spec.get(key)}, {first} "
                                   f"{spec0.get(key)} and the ensemble {model_cfg.get(key)}; the members of an ensemble "
                                   f"see the same images: give them (and models.{name}.{key}) one value")
    specs = [{**spec, "member": m} for m, (_, spec) in loaded.items()]
    model = Ensemble([mod for mod, _ in loaded.values()], [(s["mean"], s["std"]) for s in specs])
    spec = {"arch": "ensemble", "arch_options": {}, "weights": "none", "members": specs,
            "input_size": spec0["input_size"], "resize": spec0.get("resize", "stretch"),
            "num_classes": spec0["num_classes"], "class_names": spec0["class_names"], "keep_head": True,
            "class_order": spec0.get("class_order", "dataset"), "mean": [0.0] * 3, "std": [1.0] * 3,
            "normalisation": {"mean": [0.0] * 3, "std": [1.0] * 3}}
    save_model(model, spec, out_model)
    _write_history(out_history, [])
    metrics = {"model": name, "trained": False, "ensemble": list(members), "arch": "ensemble", "weights": "none",
               "device": "cpu",  # where it was put together; its members' reports say where they were trained
               "n_params": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - t0, 2)}
    write_json(out_metrics, metrics)
    log.info("%s: the ensemble of %s (%d classes), the mean of their probabilities", name, ", ".join(members),
             spec["num_classes"])
    return metrics
