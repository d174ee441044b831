"""Hugging Face image classifiers (arch hf:FOLDER): tiny models of each family built from configs (seeded), saved
with save_pretrained beside their image processor, and read back by cvaudit without a network. The audit's logits
are transformers' own, image for image; the token views find the patch grid; rollout reads the model's attention."""
import json

import pytest
import torch

from cvaudit import CvauditError
from cvaudit.model.train_model import make_spec
from cvaudit.net.models import build_model, load_model, save_model
from cvaudit.net.transforms import eval_transform

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

CLASSES = ["coat", "sandal", "shirt"]
LABELS = {"id2label": dict(enumerate(CLASSES)), "label2id": {c: i for i, c in enumerate(CLASSES)}}
SIZE = 32
FAMILIES = {  # model_type: (config, image processor) of a tiny model at 32 px
    "vit": (lambda: transformers.ViTConfig(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64, **LABELS),
            lambda: transformers.ViTImageProcessor(size={"height": SIZE, "width": SIZE})),
    "deit": (lambda: transformers.DeiTConfig(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64,
                                             architectures=["DeiTForImageClassificationWithTeacher"], **LABELS),
             lambda: transformers.ViTImageProcessor(size={"height": SIZE, "width": SIZE})),
    "beit": (lambda: transformers.BeitConfig(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, use_mean_pooling=False,
                                             **LABELS),
             lambda: transformers.ViTImageProcessor(size={"height": SIZE, "width": SIZE})),
    "dinov2": (lambda: transformers.Dinov2Config(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, mlp_ratio=2, **LABELS),
               lambda: transformers.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": SIZE, "width": SIZE},
                                                      do_center_crop=True)),
    "swin": (lambda: transformers.SwinConfig(image_size=SIZE, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                             window_size=4, **LABELS),
             lambda: transformers.ViTImageProcessor(size={"height": SIZE, "width": SIZE})),
    "convnext": (lambda: transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], **LABELS),
                 lambda: transformers.ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=0.875)),
    # EfficientNet's processor maps pixels to [-1, 1] (rescale_offset) and divides by image_std once more (include_top)
    "efficientnet": (lambda: transformers.EfficientNetConfig(image_size=SIZE, width_coefficient=0.25, depth_coefficient=0.1,
                                                             hidden_dim=320, **LABELS),
                     lambda: transformers.EfficientNetImageProcessor(size={"height": SIZE, "width": SIZE},
                                                                     rescale_factor=1 / 127.5, rescale_offset=True,
                                                                     include_top=True)),
    "resnet": (lambda: transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                 layer_type="basic", **LABELS),
               lambda: transformers.ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=0.875)),
}


def saved(tmp_path, family: str):
    """The family's tiny classifier, seeded, saved as a user's folder: config.json, model.safetensors,
    preprocessor_config.json."""
    config, processor = FAMILIES[family]
    torch.manual_seed(0)
    model = transformers.AutoModelForImageClassification.from_config(config()).eval()
    if family == "efficientnet":  # its initial weights are so small that every image's logits are about 1e-29
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(m.weight)
            elif isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.5)
    folder = tmp_path / family
    model.save_pretrained(folder)
    processor().save_pretrained(folder)
    return folder, model


def cfg(folder, **kw):
    return {"arch": f"hf:{folder}", "weights": "none", "input_size": SIZE, "train": False, **kw}


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    from conftest import fmnist_images
    rgb, _ = fmnist_images(6, seed=3)
    return [Image.fromarray(a).resize((SIZE, SIZE), Image.BILINEAR) for a in rgb]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_audit_gives_transformers_own_logits_and_classes(tmp_path, images, family):
    folder, theirs = saved(tmp_path, family)
    spec = make_spec(cfg(folder), CLASSES[::-1])  # the dataset's order is not the model's: id2label wins
    assert spec["class_names"] == CLASSES and spec["class_order"] == "config"
    net = build_model(spec).eval()
    spec["mean"], spec["std"] = spec["normalisation"]["mean"], spec["normalisation"]["std"]
    x = torch.stack([eval_transform(spec)(im) for im in images])
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        ours = net(x)
        ref = theirs(**processor(images=images, return_tensors="pt")).logits
    # the processor's resize (PIL) and cvaudit's (torch, antialiased) differ by rounding where they resize
    resized = spec["resize"] == "center_crop"
    assert torch.allclose(ours, ref, atol=0.05 if resized else 1e-4), (ours - ref).abs().max()
    if not resized:
        assert (ours.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("family", ["vit", "swin", "convnext"])
def test_a_saved_audit_model_is_rebuilt_without_the_folder(tmp_path, images, family):
    import shutil
    folder, theirs = saved(tmp_path, family)
    spec = make_spec(cfg(folder), CLASSES)
    net = build_model(spec)
    spec["hf_config"] = net.saved_config()
    save_model(net, spec, tmp_path / "model.safetensors")
    shutil.rmtree(folder)
    again, _ = load_model(tmp_path / "model.safetensors")
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(again(x), theirs(pixel_values=x).logits)


@pytest.mark.parametrize("family,prefix,grid,blocks", [("vit", 1, (4, 4), 2), ("deit", 2, (4, 4), 2),
                                                       ("dinov2", 1, (4, 4), 2),
                                                       ("swin", 0, (8, 8), 1), ("convnext", None, None, 0)])
def test_the_token_views_find_the_patch_grid(tmp_path, family, prefix, grid, blocks):
    from cvaudit.net.hooks import Hooks
    from cvaudit.net.tokens import as_maps, token_layout
    from cvaudit.net.tokens import blocks as block_names
    folder, _ = saved(tmp_path, family)
    net = build_model(make_spec(cfg(folder), CLASSES)).eval()
    layout = token_layout(net)
    assert (layout is None) if prefix is None else (layout.prefix, layout.grid) == (prefix, grid)
    names = block_names(net)
    assert len(names) == blocks
    if names:  # the last block's output, seen as maps on the patch grid (a Swin layer's windows merged back)
        store = {}
        with Hooks() as hooks, torch.no_grad():
            hooks.forward(net.get_submodule(names[-1]), lambda m, i, o: store.__setitem__("o", o))
            net(torch.rand(2, 3, SIZE, SIZE))
        assert as_maps(store["o"], layout).shape[-2:] == grid


def test_rollout_reads_the_models_attention_and_restores_it(tmp_path, images):
    from cvaudit.explain.methods.transformer import AttentionRollout
    from cvaudit.net.pixel_space import PixelSpace
    folder, theirs = saved(tmp_path, "vit")
    spec = make_spec(cfg(folder), CLASSES)
    net = build_model(spec).eval()
    before = net.hf.config._attn_implementation
    pix = PixelSpace(net, spec["normalisation"]["mean"], spec["normalisation"]["std"])
    x = torch.rand(3, 3, SIZE, SIZE)
    method = AttentionRollout(head_fusion="mean", residual=0.5)
    ours = method.attribute(pix, x, torch.zeros(3, dtype=torch.long))
    assert net.hf.config._attn_implementation == before
    # by hand from the attention weights transformers returns (eager), in the pixel model's normalisation
    theirs.set_attn_implementation("eager")
    with torch.no_grad():
        attn = theirs(pixel_values=(x - 0.5) / 0.5, output_attentions=True).attentions
    r = torch.eye(17).expand(3, -1, -1)
    for a in attn:
        a = 0.5 * torch.eye(17) + 0.5 * a.mean(1)
        r = (a / a.sum(-1, keepdim=True)) @ r
    want = torch.nn.functional.interpolate(r[:, 0, 1:].reshape(3, 1, 4, 4), size=(SIZE, SIZE), mode="bilinear",
                                           align_corners=False)[:, 0]
    assert torch.allclose(ours, want, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1])  # the image matters


def test_chefers_relevance_reads_the_models_attention_and_its_gradient(tmp_path):
    from cvaudit.explain.methods.transformer import TransformerAttribution
    from cvaudit.net.pixel_space import PixelSpace
    folder, theirs = saved(tmp_path, "vit")
    net = build_model(make_spec(cfg(folder), CLASSES)).eval()
    x, target = torch.rand(3, 3, SIZE, SIZE), torch.tensor([0, 1, 2])
    ours = TransformerAttribution().attribute(PixelSpace(net, [0.5] * 3, [0.5] * 3), x, target)
    # by hand: R <- R + mean over heads of (dS/dA * A)+ . R, from the weights transformers returns and their gradient
    theirs.set_attn_implementation("eager")
    out = theirs(pixel_values=(x - 0.5) / 0.5, output_attentions=True)
    grads = torch.autograd.grad(out.logits.gather(1, target.view(-1, 1)).sum(), out.attentions)
    r = torch.eye(17).expand(3, -1, -1)
    for a, g in zip(out.attentions, grads):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    want = torch.nn.functional.interpolate((r - torch.eye(17))[:, 0, 1:].reshape(3, 1, 4, 4), size=(SIZE, SIZE),
                                           mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(ours, want, atol=1e-6) and want.abs().sum() > 0


def test_rollout_refuses_a_windowed_transformer(tmp_path):
    from cvaudit.explain.methods.base import NotApplicable
    from cvaudit.explain.methods.transformer import AttentionRollout
    from cvaudit.net.pixel_space import PixelSpace
    folder, _ = saved(tmp_path, "swin")
    net = build_model(make_spec(cfg(folder), CLASSES)).eval()
    with pytest.raises(NotApplicable, match="not global"):
        AttentionRollout(head_fusion="mean", residual=0.5).attribute(
            PixelSpace(net, [0.5] * 3, [0.5] * 3), torch.rand(1, 3, SIZE, SIZE), torch.zeros(1, dtype=torch.long))


def test_fine_tuning_takes_the_datasets_classes_and_keeps_the_backbone(tmp_path):
    folder, theirs = saved(tmp_path, "vit")
    spec = make_spec(cfg(folder, train={"epochs": 1}), ["a", "b", "c", "d"])
    net = build_model(spec)
    assert spec["class_names"] == ["a", "b", "c", "d"] and net(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 4)
    assert torch.equal(net.hf.vit.embeddings.patch_embeddings.projection.weight,
                       theirs.vit.embeddings.patch_embeddings.projection.weight)


def test_bad_folders_get_errors_that_name_the_file_and_the_fix(tmp_path):
    folder, _ = saved(tmp_path, "vit")
    with pytest.raises(CvauditError, match="input_size is 64; set input_size to the model's own size"):
        make_spec(cfg(folder, input_size=64), CLASSES)
    with pytest.raises(CvauditError, match="carries its own weights"):
        make_spec(cfg(folder, weights="w.safetensors"), CLASSES)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CvauditError, match="no model.safetensors .only pytorch_model.bin, which cvaudit does not unpickle"):
        make_spec(cfg(folder), CLASSES)
    conf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    with pytest.raises(CvauditError, match="has no config.json; give the folder a transformers model was saved to"):
        make_spec(cfg(folder), CLASSES)
    (folder / "pytorch_model.bin").rename(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**conf, "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}}))
    with pytest.raises(CvauditError, match="names no classes"):
        make_spec(cfg(folder), CLASSES)
    assert make_spec(cfg(folder, class_names=CLASSES), CLASSES)["class_names"] == CLASSES  # named in the config
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(CvauditError, match="preprocessor_config.json not found"):
        make_spec(cfg(folder, class_names=CLASSES), CLASSES)
