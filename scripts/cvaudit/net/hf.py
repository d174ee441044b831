"""Hugging Face `transformers` image classifiers (config key models.*.arch `hf:FOLDER`): a folder written by
`save_pretrained` (config.json, model.safetensors, preprocessor_config.json), read locally, never downloaded.

`HFClassifier` makes one an ordinary cvaudit network: pixels in, logits out (the output object's `logits`).
Its classes are the config's `id2label`; its normalisation, resize and crop come from the image processor's
config (`processor_settings`, checked against models.*.input_size). The layer-bound views see it through
the same small protocol a timm transformer offers (cvaudit.net.tokens): `token_layout` (class and register
tokens, then the patch grid), `block_names` (the encoder's layers; for Swin the last stage's, whose windows
are already merged back onto the patch grid) and `attention_weights` (global self-attention only: ViT,
DeiT, BEiT, DINOv2), the model switched to eager attention for the call and restored after."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from cvaudit import CvauditError
from cvaudit.net.tokens import Layout

KEY = "models.*.arch"
GLOBAL_ATTENTION = {"vit", "deit", "beit", "dinov2", "dinov2_with_registers"}


def _first(v) -> int:
    """A config size given as an int or as (height, width)."""
    return int(v) if isinstance(v, int) else int(v[0])


def folder_of(arch: str) -> Path:
    return Path(arch[len("hf:"):])


def read_folder(arch: str) -> tuple[dict, dict | None]:
    """The folder's model config and image processor config (None without preprocessor_config.json), with a clear
    error for a folder that is not a saved transformers image classifier."""
    folder = folder_of(arch)
    if not (folder / "config.json").is_file():
        raise CvauditError(f"config key {KEY} '{arch}': {folder} has no config.json; give the folder a transformers "
                           "model was saved to with model.save_pretrained(folder)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CvauditError(f"{folder / 'config.json'} is not valid JSON ({e}) (config key {KEY})") from None
    if "model_type" not in config:
        raise CvauditError(f"{folder / 'config.json'} names no model_type: not a transformers config (config key {KEY})")
    processor = None
    if (folder / "preprocessor_config.json").is_file():
        try:
            processor = json.loads((folder / "preprocessor_config.json").read_text())
        except json.JSONDecodeError as e:
            raise CvauditError(f"{folder / 'preprocessor_config.json'} is not valid JSON ({e})") from None
    return config, processor


def weights_file(arch: str) -> Path:
    folder = folder_of(arch)
    if (folder / "model.safetensors").is_file():
        return folder / "model.safetensors"
    pickled = [p.name for p in folder.glob("*.bin")]
    raise CvauditError(f"config key {KEY} '{arch}': {folder} has no model.safetensors" +
                       (f" (only {', '.join(pickled)}, which cvaudit does not unpickle)" if pickled else "") +
                       "; save it with model.save_pretrained(folder) (safetensors is the default)")


def class_names(config: dict, arch: str) -> list[str]:
    """The outputs' names from id2label, in output order."""
    id2label = config.get("id2label") or {}
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (ValueError, TypeError):
        names = []
    if not names or names == [f"LABEL_{i}" for i in range(len(names))]:
        raise CvauditError(f"{folder_of(arch) / 'config.json'} names no classes (id2label is missing or LABEL_0, "
                           "LABEL_1 ...): set config.id2label before saving, or give models.*.class_names in output order")
    return names


def _size(entry, where: str) -> tuple[int, int] | int:
    """A processor size entry: (height, width), or the shortest edge as an int."""
    if isinstance(entry, int):
        return (entry, entry)
    if isinstance(entry, dict):
        if "height" in entry and "width" in entry:
            return (int(entry["height"]), int(entry["width"]))
        if "shortest_edge" in entry:
            return int(entry["shortest_edge"])
    raise CvauditError(f"{where}: a size cvaudit does not read ({entry!r}); it reads "
                       "{height, width} and {shortest_edge}")


def _normalisation(processor: dict) -> dict:
    """The processor's pixel arithmetic as one (p - mean) / std per channel, p the pixel in [0, 1]: rescale (value x
    rescale_factor, minus 1 with EfficientNet's rescale_offset), normalise, and EfficientNet's include_top, which
    divides by image_std once more."""
    factor = float(processor.get("rescale_factor", 1 / 255)) * 255 if processor.get("do_rescale", True) else 255.0
    mean, std = [(1.0 if processor.get("rescale_offset") else 0.0) / factor] * 3, [1.0 / factor] * 3
    image_mean, image_std = processor.get("image_mean"), processor.get("image_std")
    if processor.get("do_normalize", True):
        mean = [m + float(im) * s for m, im, s in zip(mean, image_mean, std)]
        std = [s * float(st) for s, st in zip(std, image_std)]
    if processor.get("include_top"):
        std = [s * float(st) for s, st in zip(std, image_std)]
    return {"mean": mean, "std": std}


def processor_settings(processor: dict | None, input_size: int, arch: str) -> dict:
    """normalisation, resize and the resized shorter side the processor config asks for, checked against
    models.*.input_size: {"normalisation": {mean, std}, "resize": stretch | center_crop, "resize_short": int}."""
    where = folder_of(arch) / "preprocessor_config.json"
    if processor is None:
        raise CvauditError(f"{where} not found: cvaudit takes the model's normalisation, resize and crop from it; save "
                           "the image processor beside the model (processor.save_pretrained(folder)) or give "
                           "models.*.normalisation")
    if (processor.get("do_normalize", True) or processor.get("include_top")) and (
            processor.get("image_mean") is None or processor.get("image_std") is None):
        raise CvauditError(f"{where}: do_normalize (or include_top) without image_mean and image_std")
    out = {"normalisation": _normalisation(processor)}
    size = processor.get("size")
    if isinstance(size, dict) and "shortest_edge" in size and "crop_pct" in processor and not processor.get("do_center_crop"):
        edge = int(size["shortest_edge"])  # ConvNeXt's and ResNet's processors: below 384 px, crop_pct's crop
        if edge != input_size:
            raise CvauditError(f"{where}: the processor gives {edge} x {edge} px images but models.*.input_size is "
                               f"{input_size}; set input_size: {edge}")
        if edge < 384:
            out.update(resize="center_crop", resize_short=int(edge / float(processor["crop_pct"])))
        else:
            out["resize"] = "stretch"
    elif processor.get("do_center_crop"):
        crop = _size(processor.get("crop_size"), f"{where} crop_size")
        short = _size(processor.get("size"), f"{where} size")
        if not isinstance(short, int):
            short = min(short)
        if crop != (input_size, input_size):
            raise CvauditError(f"{where}: the processor crops {crop[0]} x {crop[1]} px but models.*.input_size is "
                               f"{input_size}; set input_size: {crop[0]}")
        out.update(resize="center_crop", resize_short=short)
    else:
        size = _size(processor.get("size"), f"{where} size")
        if size != (input_size, input_size):
            raise CvauditError(f"{where}: the processor resizes to {size} but models.*.input_size is {input_size}; "
                               f"set input_size to the model's own size")
        out["resize"] = "stretch"
    return out


class HFClassifier(nn.Module):
    """A transformers image classifier as a network of pixels to logits (see the module's docstring)."""

    def __init__(self, arch: str, num_classes: int, class_names: list[str], saved_config: dict | None = None,
                 pretrained: bool = True):
        super().__init__()
        import transformers
        config, _ = (saved_config, None) if saved_config is not None else read_folder(arch)
        labels = {"num_labels": num_classes, "id2label": {i: c for i, c in enumerate(class_names)},
                  "label2id": {c: i for i, c in enumerate(class_names)}}
        auto = transformers.AutoModelForImageClassification
        try:
            if pretrained:
                same = (config.get("id2label") and [str(v) for _, v in sorted(config["id2label"].items(), key=lambda kv: int(kv[0]))]
                        == list(class_names))
                self.hf = auto.from_pretrained(str(folder_of(arch)), local_files_only=True, use_safetensors=True,
                                               **({} if same else {**labels, "ignore_mismatched_sizes": True}))
            else:
                cfg = transformers.AutoConfig.for_model(**{**config, **labels})
                self.hf = auto.from_config(cfg)
        except (OSError, ValueError, KeyError) as e:
            raise CvauditError(f"config key {KEY} '{arch}': transformers could not build the model ({type(e).__name__}: "
                               f"{str(e)[:300]})") from None
        self.hf.eval()
        self.model_type = self.hf.config.model_type

    def forward(self, x):
        return self.hf(pixel_values=x).logits

    @property
    def global_attention(self) -> bool:
        return self.model_type in GLOBAL_ATTENTION

    def saved_config(self) -> dict:
        """The config to rebuild this network without the folder (kept in the cvaudit model file's spec)."""
        return self.hf.config.to_dict()

    # ----------------------------------------------------------------- the token protocol of cvaudit.net.tokens
    def _layers(self) -> list[tuple[str, nn.Module]]:
        rec = getattr(self.hf, "_can_record_outputs", None) or {}
        target = rec.get("hidden_states")
        cls = getattr(target, "target_class", target)
        if self.model_type == "swin" or not isinstance(cls, type):
            cls = next((type(m) for m in self.hf.modules() if type(m).__name__.endswith("SwinLayer")), None)
        return [(f"hf.{n}", m) for n, m in self.hf.named_modules() if cls is not None and type(m) is cls]

    def token_layout(self) -> Layout | None:
        """Class and register tokens, then the patch grid, for the transformers whose layers are token sequences;
        None for the convolutional ones (ResNet, ConvNeXt, EfficientNet ...), whose layers are feature maps."""
        c = self.hf.config
        side = (_first(c.image_size) // _first(c.patch_size)) if hasattr(c, "patch_size") else None
        if self.model_type in GLOBAL_ATTENTION:
            prefix = 1 + (self.model_type == "deit" and "Teacher" in type(self.hf).__name__) \
                + int(getattr(c, "num_register_tokens", 0) or 0)
            return Layout(prefix, (side, side))
        if self.model_type == "swin":  # each stage after the first halves the grid
            side //= 2 ** (len(c.depths) - 1)
            return Layout(0, (side, side))
        return None

    def block_names(self) -> list[str]:
        """The layers whose outputs are token sequences on the layout (last Swin stage only), first to last."""
        layers = self._layers()
        if self.model_type == "swin":  # named_modules runs in definition order: the last layer is the last stage's
            last = layers[-1][0].rsplit(".blocks.", 1)[0] if layers else ""
            return [n for n, _ in layers if n.startswith(last + ".blocks.")]
        return [n for n, _ in layers] if self.model_type in GLOBAL_ATTENTION else []

    def patch_embedding_name(self) -> str | None:
        """The module that turns the image into patch tokens (…PatchEmbeddings), for the token models."""
        if self.token_layout() is None:
            return None
        return next((f"hf.{n}" for n, m in self.hf.named_modules() if type(m).__name__.endswith("PatchEmbeddings")),
                    None)

    @contextlib.contextmanager
    def attention_weights(self):
        """Yields a list each forward pass fills with every layer's attention weights (N, heads, T, T), first
        layer first. Eager attention (the one that forms the weights) is switched on for the call and restored."""
        if not self.global_attention:
            raise CvauditError(f"{self.model_type}: attention is not global over the patches (windows or none)")
        rec = (getattr(self.hf, "_can_record_outputs", None) or {}).get("attentions")
        cls = getattr(rec, "target_class", rec)
        mods = [m for m in self.hf.modules() if type(m) is cls]
        if not mods:
            raise CvauditError(f"{type(self.hf).__name__}: transformers names no attention layers it can record")
        found: list[torch.Tensor] = []
        before = self.hf.config._attn_implementation
        handles = [m.register_forward_hook(lambda _m, _i, o: found.append(o[1])) for m in mods]
        try:
            self.hf.set_attn_implementation("eager")
            yield found
        finally:
            for h in handles:
                h.remove()
            self.hf.set_attn_implementation(before)
