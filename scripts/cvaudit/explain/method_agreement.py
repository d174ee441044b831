"""The method_agreement stage: how alike one model's attribution maps are across methods (the mean rank
correlation over the audit images, for the predicted class; cvaudit.explain.trust.agreement). The report's
attributions section reads what it writes."""
from __future__ import annotations

import logging

from cvaudit.core.files import load_npz, stage_failure, write_json
from cvaudit.core.registry import FLOOR_METHOD
from cvaudit.explain.trust import _small, agreement

log = logging.getLogger("cvaudit.explain.method_agreement")


def run_method_agreement(maps: dict, out) -> dict:
    """maps: {method: maps.npz} in the config's order. Each method's maps are read and pooled to the
    coarse grid one at a time, so memory holds 28 x 28 per image and method, not the full maps. Methods
    whose stage failed or that do not apply to the model are left out (their sections say why); with
    fewer than two left there is nothing to compare."""
    usable = {}
    for method, path in maps.items():
        if method == FLOOR_METHOD or stage_failure(path):
            continue
        z = load_npz(path, keys=("maps_pred",))
        if z["meta"]["applicable"]:  # kept at the coarse grid the rank correlation reads (at most 28 x 28)
            maps_pred = z["maps_pred"]
            side = (28, 28) if maps_pred.shape[-1] > 28 else maps_pred.shape[-2:]
            usable[z["meta"]["label"]] = _small(maps_pred).reshape(len(maps_pred), *side)
    result = agreement(usable) if len(usable) > 1 else {"methods": list(usable), "matrix": None}
    write_json(out, result)
    log.info("agreement between %d methods", len(usable))
    return result
