#!/usr/bin/env python
"""Write the Hugging Face ViT that config/vit.yaml audits beside the timm one: a `transformers` ViTForImageClassification
of the same shape as vit_fmnist (4 px patches on 28 px images, 6 layers of width 64, 4 heads), initialised from its
config (seed 0, nothing downloaded) and saved with save_pretrained beside its image processor, as a user's
folder would be. `make vit` runs it first; the audit fine-tunes the model from these weights.

Usage: .venv/bin/python tools/make_hf_vit.py [--out runs/vit/hf_vit_fmnist]
"""
from __future__ import annotations

import argparse
from pathlib import Path

FMNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/vit/hf_vit_fmnist", help="the folder to write (kept if it holds a model)")
    out = Path(ap.parse_args().out)
    if (out / "model.safetensors").exists():
        print(f"{out}: already written")
        return
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=28, patch_size=4, hidden_size=64, num_hidden_layers=6,
                                    num_attention_heads=4, intermediate_size=256, id2label=dict(enumerate(FMNIST)))
    model = transformers.ViTForImageClassification(config)
    model.save_pretrained(out)
    transformers.ViTImageProcessor(size={"height": 28, "width": 28}).save_pretrained(out)
    print(f"{out}: a ViT of {sum(p.numel() for p in model.parameters()):,} parameters and its processor")


if __name__ == "__main__":
    main()
