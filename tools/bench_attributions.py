#!/usr/bin/env python
"""Speed of the perturbation methods (and integrated gradients, the SmoothGrad family, gradient x input,
DeepLIFT, Deep SHAP, Kernel SHAP, Shapley value sampling and LRP) against their compute floor, and against
the libraries' own defaults, timed so that a drift in this machine's speed cannot fake a ratio.

For each method on the demo's pretrained model (EfficientNet-Lite0, packaged ImageNet weights, 224 px,
foolbox's photos):
- the passes the model really makes are recorded by a hook (the images of every call, and whether an
  input gradient was taken), and the floor is the replay of exactly those calls as plain batched passes
  (same batch sizes, same gradients): the time the model alone needs for that method;
- the method and its floor run interleaved (A B A B ..., `--repeats` pairs after a warm-up), and the
  table gives the median of the per-pair ratios with their min-max; likewise against the library's
  default (captum's, lime's, shap's own call with its default batching).

    .venv/bin/python tools/bench_attributions.py [--images 4] [--threads 2] [--repeats 5] [--device cpu]
        [--out results/bench/attributions.json]

With --model vit the methods that read a vision transformer (Grad-CAM on tokens, attention rollout, Chefer et
al.'s relevance) run on timm's ViT-Tiny/16 at 224 px (197 tokens, 12 blocks; seeded random weights: the speed
does not depend on them); Grad-CAM against pytorch-grad-cam's GradCAM with its ViT recipe, the other two
against their floor only (no library implements them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
os.environ.setdefault("TQDM_DISABLE", "1")  # shap's progress bars
from cvaudit.explain.methods import attribute_batched, get_method  # noqa: E402
from cvaudit.explain.methods.base import out_of_place  # noqa: E402
from cvaudit.explain.methods.perturbation import superpixels, target_probability_fn  # noqa: E402
from cvaudit.net.hooks import Hooks  # noqa: E402
from cvaudit.net.models import auto_batch, build_model, normalisation  # noqa: E402
from cvaudit.net.pixel_space import PixelSpace  # noqa: E402

SETTINGS = {"occlusion": {"window": 56, "stride": 28}, "integrated_gradients": {"steps": 16},
            "lime": {"samples": 128, "segments": 40}, "shap": {"evals": 128}, "smoothgrad": {"samples": 16},
            "vargrad": {"samples": 16}, "input_x_gradient": {}, "deeplift": {}, "deeplift_shap": {"background": 8},
            "kernel_shap": {"samples": 256, "segments": 40}, "shapley_sampling": {"samples": 2, "segments": 40},
            "lrp": {}, "gradcam": {}, "attention_rollout": {}, "transformer_attribution": {}}
VIT_METHODS = ["gradcam", "attention_rollout", "transformer_attribution"]
# against a library, the same work: cvaudit's integrated gradients raise the steps of an image until its map
# is complete (up to 512), captum's call makes 16; cvaudit's LIME also scores its surrogate on 64 fresh
# samples, lime's call does not. For that comparison ours stops after its first 16 steps, and skips the score.
SAME_WORK = {"integrated_gradients": {"max_steps": 16}, "lime": {"check_samples": 0}}


def trace(fn, net) -> list[tuple[int, bool, bool]]:
    """The model calls `fn` makes: (images, with an input gradient, channels-last memory) for each. The
    memory layout matters: images decoded from HWC arrays arrive channels-last, and on a CPU a
    convolution on those runs at another speed than on contiguous NCHW copies."""
    calls = []

    def record(m, a):
        t = a[0]
        calls.append((t.shape[0], torch.is_grad_enabled() and t.requires_grad,
                      not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)))
    with Hooks() as hooks:  # on the model inside the normalisation: LRP calls it directly
        hooks.forward_pre(getattr(net, "model", net), record)
        fn()
    return calls


def replay(net, x: torch.Tensor, calls: list[tuple[int, bool, bool]]):
    """The floor: the same calls as plain passes (a forward, or a forward and an input gradient), in the
    same memory layout."""
    pool = x.repeat((max(c[0] for c in calls) + len(x) - 1) // len(x), 1, 1, 1).contiguous()
    pools = {False: pool, True: pool.contiguous(memory_format=torch.channels_last)}

    def run():
        for b, grad, cl in calls:
            xb = pools[cl][:b]
            if grad:
                xi = xb.clone().requires_grad_(True)
                torch.autograd.grad(net(xi)[:, 0].sum(), xi)
            else:
                with torch.no_grad():
                    net(xb)
        sync(x.device)
    return run


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(a, b, repeats: int, device) -> dict:
    """Time a and b in turn (a warm-up pair first), `repeats` pairs; the ratio a/b per pair."""
    def once(fn):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t
    once(a), once(b)
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(once(a))
        tb.append(once(b))
    ratios = [x / y for x, y in zip(ta, tb)]
    return {"a_s": round(statistics.median(ta), 3), "b_s": round(statistics.median(tb), 3),
            "ratio": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3)}


def library_defaults(net, x, target) -> dict:
    """Each method as its library's own call with the library's default batching."""
    from captum.attr import IntegratedGradients, Occlusion

    def occlusion():
        Occlusion(lambda inp: torch.softmax(net(inp), 1)).attribute(
            x, sliding_window_shapes=(3, 56, 56), strides=(3, 28, 28), baselines=0.5, target=target)

    def integrated_gradients():
        IntegratedGradients(net).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=16)

    def lime():
        from lime import lime_image
        for img, t in zip(x.cpu().permute(0, 2, 3, 1).double().numpy(), target.tolist()):
            lime_image.LimeImageExplainer(random_state=0).explain_instance(
                img, target_probability_fn(net, t), labels=(0,), top_labels=None, num_samples=128,
                segmentation_fn=lambda im: superpixels(im, 40))  # batch_size left at its default (10)

    def shap():
        import shap as sh
        imgs = x.cpu().permute(0, 2, 3, 1).numpy().astype(np.float64)
        masker = sh.maskers.Image(np.zeros(imgs.shape[1:]), imgs.shape[1:])
        for img, t in zip(imgs, target.tolist()):
            sh.Explainer(target_probability_fn(net, t), masker, algorithm="partition")(img[None], max_evals=128,
                                                                                      silent=True)
    def noise_tunnel(kind):
        from captum.attr import NoiseTunnel, Saliency
        return lambda: NoiseTunnel(Saliency(net)).attribute(x, nt_type=kind, nt_samples=16, stdevs=0.15, target=target)

    def input_x_gradient():
        from captum.attr import InputXGradient
        InputXGradient(net).attribute(x, target=target)

    def deeplift():
        from captum.attr import DeepLift
        with out_of_place(net):
            DeepLift(net).attribute(x, baselines=torch.zeros_like(x), target=target)

    def deeplift_shap():
        from captum.attr import DeepLiftShap
        base = torch.linspace(0, 1, 8).view(-1, 1, 1, 1).expand(8, *x.shape[1:]).contiguous()
        with out_of_place(net):
            DeepLiftShap(net).attribute(x, baselines=base, target=target)

    def superpixel_shapley(cls, **kw):
        def run():
            prob = lambda inp: torch.softmax(net(inp), 1)  # noqa: E731
            for k in range(len(x)):
                img = x[k].permute(1, 2, 0).cpu().double().numpy()
                seg = torch.from_numpy(np.unique(superpixels(img, 40), return_inverse=True)[1].reshape(img.shape[:2]))
                fill = x[k:k + 1].clone()
                for s in seg.unique():
                    fill[0, :, seg == s] = x[k][:, seg == s].mean(1, keepdim=True)
                cls(prob).attribute(x[k:k + 1], baselines=fill, target=target[k:k + 1],
                                    feature_mask=seg.view(1, 1, *seg.shape).expand(1, 3, *seg.shape).contiguous(), **kw)
        return run

    def lrp():
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat
        with out_of_place(net), Gradient(model=net, composite=EpsilonPlusFlat()) as attributor:
            attributor(x, lambda o: torch.nn.functional.one_hot(target, o.shape[1]).to(o.dtype) * o)

    from captum.attr import KernelShap, ShapleyValueSampling
    return {"occlusion": ("captum Occlusion, perturbations_per_eval=1", occlusion),
            "deeplift_shap": ("captum DeepLiftShap, 8 baselines in one call", deeplift_shap),
            "kernel_shap": ("captum KernelShap, perturbations_per_eval=1", superpixel_shapley(KernelShap, n_samples=256)),
            "shapley_sampling": ("captum ShapleyValueSampling, perturbations_per_eval=1",
                                 superpixel_shapley(ShapleyValueSampling, n_samples=2)),
            "lrp": ("zennit EpsilonPlusFlat on the whole batch, no batch-norm merge", lrp),
            "smoothgrad": ("captum NoiseTunnel(Saliency), all samples in one call", noise_tunnel("smoothgrad")),
            "vargrad": ("captum NoiseTunnel(Saliency), all samples in one call", noise_tunnel("vargrad")),
            "input_x_gradient": ("captum InputXGradient", input_x_gradient),
            "deeplift": ("captum DeepLift", deeplift),
            "integrated_gradients": ("captum IG, internal_batch_size=None", integrated_gradients),
            "lime": ("lime_image, batch_size=10", lime),
            "shap": ("shap Partition, batch_size='auto'", shap)}


def vit_library_defaults(net, x, target) -> dict:
    """pytorch-grad-cam's GradCAM with its ViT recipe (the last block's norm1, tokens reshaped to the grid)."""
    from pytorch_grad_cam.grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    vit = net.model
    grid = vit.patch_embed.grid_size

    def gradcam():
        cam = GradCAM(model=net, target_layers=[vit.blocks[-1].norm1],
                      reshape_transform=lambda o: o[:, 1:].reshape(len(o), *grid, o.shape[-1]).permute(0, 3, 1, 2))
        cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
        cam.activations_and_grads.release()
    return {"gradcam": ("pytorch-grad-cam GradCAM", gradcam)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved pairs per comparison (after a warm-up pair)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", default="auto", help="images per model call for cvaudit (default: auto, by pixels)")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every method the model takes")
    ap.add_argument("--model", choices=["lite0", "vit"], default="lite0")
    ap.add_argument("--out", default="results/bench/attributions.json")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    spec = {"arch": "timm:tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0", "input_size": 224,
            "num_classes": 1000, "keep_head": True}
    if a.model == "vit":
        spec = {"arch": "timm:vit_tiny_patch16_224", "weights": "none", "input_size": 224, "num_classes": 1000}
    methods = a.methods or (VIT_METHODS if a.model == "vit" else [m for m in SETTINGS if m not in VIT_METHODS])
    model = build_model(spec).eval()
    net = PixelSpace(model, *normalisation(spec, model)).to(dev).eval()
    from torchvision.transforms import v2 as T

    from cvaudit.core.images import load_rgb
    from cvaudit.data.sources import foolbox_dir
    tf = T.Compose([T.ToImage(), T.Resize((224, 224), antialias=True), T.ToDtype(torch.float32, scale=True)])
    x = torch.stack([tf(load_rgb(p)) for p in sorted(foolbox_dir().glob("imagenet_*.jpg"))[:a.images]]).to(dev)
    with torch.no_grad():
        target = net(x).argmax(1)
    batch = auto_batch(224, 224, dev, a.batch)
    libs = vit_library_defaults(net, x, target) if a.model == "vit" else library_defaults(net, x, target)
    rows = []
    for name in methods:
        m = get_method(name, batch_size=batch, **SETTINGS[name])

        def ours(m=m):
            attribute_batched(m, net, x, target)
            sync(dev)
        calls = trace(ours, net)
        vs_floor = interleaved(ours, replay(net, x, calls), a.repeats, dev)
        impl, lib = libs.get(name, (None, None))
        if lib is None:  # nothing to compare with
            rows.append({"method": name, "images": len(x), "batch_size": batch, "calls": len(calls),
                         "passes_per_image": sum(c[0] for c in calls) / len(x), "wall_s": vs_floor["a_s"],
                         "floor_s": vs_floor["b_s"], "wall_over_floor": vs_floor["ratio"],
                         "wall_over_floor_min_max": [vs_floor["ratio_min"], vs_floor["ratio_max"]], "library": None})
            print(json.dumps(rows[-1]), flush=True)
            continue
        lib_calls = trace(lib, net)
        if name in SAME_WORK:
            same = get_method(name, batch_size=batch, **SETTINGS[name], **SAME_WORK[name])

            def ours(m=same):
                attribute_batched(m, net, x, target)
                sync(dev)
        vs_lib = interleaved(lib, ours, a.repeats, dev)
        row = {"method": name, "images": len(x), "batch_size": batch, "calls": len(calls),
               "passes_per_image": sum(c[0] for c in calls) / len(x),
               "channels_last_calls": sum(c[2] for c in calls), "wall_s": vs_floor["a_s"],
               "floor_s": vs_floor["b_s"], "wall_over_floor": vs_floor["ratio"],
               "wall_over_floor_min_max": [vs_floor["ratio_min"], vs_floor["ratio_max"]],
               "library": impl, "same_work": SAME_WORK.get(name, {}),
               "library_passes_per_image": sum(c[0] for c in lib_calls) / len(x),
               "library_wall_s": vs_lib["a_s"], "speedup_over_library": vs_lib["ratio"],
               "speedup_min_max": [vs_lib["ratio_min"], vs_lib["ratio_max"]]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"machine": f"{platform.machine()}, {a.device}, {torch.get_num_threads()} threads, torch {torch.__version__}"
                      + (f", {torch.cuda.get_device_name()}" if dev.type == "cuda" else ""),
           "model": ("ViT-Tiny/16 (seeded random weights), 224 px" if a.model == "vit" else
                     "EfficientNet-Lite0 (packaged ImageNet weights), 224 px") + ", foolbox ImageNet photos",
           "repeats": a.repeats, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"\n{out['machine']}; {len(x)} images; medians of {a.repeats} interleaved pairs (min-max)\n")
    print("| method | passes/img | calls | wall s | wall / floor (same calls) | library default | its passes/img "
          "| our speed-up over it |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["library"] is None:
            print(f"| {r['method']} | {r['passes_per_image']:.0f} | {r['calls']} | {r['wall_s']:.2f} | "
                  f"{r['wall_over_floor']:.2f} ({r['wall_over_floor_min_max'][0]:.2f}-{r['wall_over_floor_min_max'][1]:.2f})"
                  " | none | | |")
            continue
        print(f"| {r['method']} | {r['passes_per_image']:.0f} | {r['calls']} | {r['wall_s']:.2f} | "
              f"{r['wall_over_floor']:.2f} ({r['wall_over_floor_min_max'][0]:.2f}-{r['wall_over_floor_min_max'][1]:.2f})"
              f" | {r['library']}{' (ours at ' + str(r['same_work']) + ')' if r['same_work'] else ''} | "
              f"{r['library_passes_per_image']:.0f} | {r['speedup_over_library']:.2f} "
              f"({r['speedup_min_max'][0]:.2f}-{r['speedup_min_max'][1]:.2f}) |")


if __name__ == "__main__":
    main()
