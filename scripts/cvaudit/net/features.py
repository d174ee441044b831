"""What a model computes on the way to its answer, for many images in one streamed pass: its penultimate embedding
(the head's input), its logits, and pooled outputs of chosen layers. The represent stage, the embedding's duplicate
search and the out-of-distribution scores of the shift stage read it."""
from __future__ import annotations

import torch
from torch import nn

from cvaudit.core.manifest import image_loader
from cvaudit.net.hooks import Hooks
from cvaudit.net.models import Ensemble, _head_name, auto_batch
from cvaudit.net.tokens import as_maps, prefix_tokens, token_layout
from cvaudit.net.transforms import eval_transform


def stream_features(model: nn.Module, rows: list[dict], spec: dict, device, layers: list[str] = (),
                    cka_images: int = 0, batch_size="auto", embeddings: bool = True) -> dict:
    """One streamed pass over `rows`: penultimate embeddings (the head's input) and logits for all images, and
    for the first `cka_images` the outputs of `layers` (spatially pooled to 2x2; a transformer's patch
    tokens pooled the same way on the patch grid, its class token beside them). Memory holds the
    embedding matrix, never the images. embeddings=False: logits alone (a model without a head to hook, such as an
    export; "embeddings" is then None)."""
    layout = token_layout(model)
    # an ensemble's embedding: its members' embeddings side by side (never one member's alone)
    heads = [] if not embeddings else model.heads() if isinstance(model, Ensemble) else [
        model.get_submodule(_head_name(model))]
    mods = {n: model.get_submodule(n) for n in layers}
    store: dict[str, torch.Tensor] = {}
    emb, feats, logit = [], {n: [] for n in layers}, []
    seen = 0
    bs = auto_batch(spec["input_size"], spec["input_size"], device, batch_size)
    with Hooks() as hooks, torch.no_grad():
        for i, head in enumerate(heads):
            hooks.forward_pre(head, lambda m, a, i=i: store.__setitem__(f"emb{i}", a[0].flatten(1)))
        for n, m in mods.items():
            hooks.forward(m, lambda mod, i, o, n=n: store.__setitem__(n, o))
        for x, _ in image_loader(rows, spec["class_names"], eval_transform(spec), bs, device):
            logits = model(x.to(device, non_blocking=True))
            if heads:
                emb.append(torch.cat([store[f"emb{i}"].float() for i in range(len(heads))], 1).cpu())
            logit.append(logits.float().cpu())
            if seen < cka_images:
                take = min(len(x), cka_images - seen)
                for n in layers:
                    o = store[n][:take].float()
                    cls = prefix_tokens(o, layout)
                    o = as_maps(o, layout)
                    o = nn.functional.adaptive_avg_pool2d(o, 2).flatten(1) if o.dim() == 4 else o.flatten(1)
                    feats[n].append((o if cls is None else torch.cat([cls, o], 1)).cpu())
            seen += len(x)
    logit = torch.cat(logit)
    return {"embeddings": torch.cat(emb).numpy() if heads else None, "logits": logit.numpy(),
            "probs": torch.softmax(logit, 1).numpy(), "layers": {n: torch.cat(v).numpy() for n, v in feats.items() if v}}
