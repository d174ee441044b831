"""Every name a config can list, in one place that imports nothing heavy (the Snakefile reads it for
its wildcard constraints): the attribution methods, the invariance families and the attacks.

Each name points at its implementation as "module:object", imported only by the job that runs it.
Adding one is its implementation (a class or a function in the module of its family) plus one line
here, and its options, if any, in config/schema.yaml; tests/unit/test_registries.py checks that the
schema's enums and defaults agree with these tables and that every entry resolves.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple


def load(ref: str):
    """The object a "module:name" reference points at."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# Attribution methods (config key explain.methods): classes with the interface of cvaudit.explain.methods.base.
# "random" is the floor of the faithfulness checks: always run, never listed by a user.
METHODS = {
    "saliency": "cvaudit.explain.methods.gradient:Saliency",
    "deconvnet": "cvaudit.explain.methods.gradient:Deconvnet",
    "guided_backprop": "cvaudit.explain.methods.gradient:GuidedBackprop",
    "cam": "cvaudit.explain.methods.cam:CAM",
    "gradcam": "cvaudit.explain.methods.cam:GradCAM",
    "guided_gradcam": "cvaudit.explain.methods.cam:GuidedGradCAM",
    "occlusion": "cvaudit.explain.methods.perturbation:Occlusion",
    "integrated_gradients": "cvaudit.explain.methods.gradient:IntegratedGradients",
    "smoothgrad": "cvaudit.explain.methods.gradient:SmoothGrad",
    "smoothgrad_sq": "cvaudit.explain.methods.gradient:SmoothGradSquared",
    "vargrad": "cvaudit.explain.methods.gradient:VarGrad",
    "input_x_gradient": "cvaudit.explain.methods.gradient:InputXGradient",
    "deeplift": "cvaudit.explain.methods.gradient:DeepLift",
    "deeplift_shap": "cvaudit.explain.methods.gradient:DeepLiftShap",
    "lrp": "cvaudit.explain.methods.relevance:LRP",
    "attention_rollout": "cvaudit.explain.methods.transformer:AttentionRollout",
    "transformer_attribution": "cvaudit.explain.methods.transformer:TransformerAttribution",
    "lime": "cvaudit.explain.methods.perturbation:LIME",
    "shap": "cvaudit.explain.methods.perturbation:SHAP",
    "kernel_shap": "cvaudit.explain.methods.perturbation:KernelShap",
    "shapley_sampling": "cvaudit.explain.methods.perturbation:ShapleySampling",
    "random": "cvaudit.explain.methods.perturbation:RandomMap",
}
FLOOR_METHOD = "random"


class Family(NamedTuple):
    """An invariance family (config key robustness.invariance): fn(x, severity, gen, seeds) on images in
    [0, 1]; `identity` is the severity that leaves an image unchanged."""
    ref: str
    identity: float


FAMILIES = {
    "translate": Family("cvaudit.robust.invariance:translate", 0.0),
    "rotate": Family("cvaudit.robust.invariance:rotate", 0.0),
    "scale": Family("cvaudit.robust.invariance:scale", 1.0),
    "brightness": Family("cvaudit.robust.invariance:brightness", 1.0),
    "contrast": Family("cvaudit.robust.invariance:contrast", 1.0),
    "noise": Family("cvaudit.robust.invariance:noise", 0.0),
    "blur": Family("cvaudit.robust.invariance:blur", 0.0),
    "jpeg": Family("cvaudit.robust.invariance:jpeg", 100),
}


class Attack(NamedTuple):
    """An attack (config key robustness.adversarial.attacks): fn(net, x, y, eps, options, seed) ->
    (adversarial images, {component: fooled}). `reads`: the keys of robustness.adversarial its job
    reads beyond those every attack job reads (SHARED_ATTACK_OPTIONS), so changing one attack's
    settings reruns that attack's jobs alone. `gradient_free`: it needs the model's outputs alone, so it
    runs on an export (EXPORT_KINDS)."""
    ref: str
    reads: tuple[str, ...] = ()
    gradient_free: bool = False


SHARED_ATTACK_OPTIONS = ("max_images", "epsilons", "examples", "example_epsilon")
ATTACKS = {
    "fgsm": Attack("cvaudit.robust.adversarial:fgsm"),
    "pgd": Attack("cvaudit.robust.adversarial:pgd", ("pgd",)),
    "autoattack": Attack("cvaudit.robust.adversarial:autoattack", ("autoattack", "masking", "check_epsilon")),
    "square": Attack("cvaudit.robust.adversarial:square", ("autoattack",), gradient_free=True),
}
BLACK_BOX_ATTACK = "square"  # what an export is attacked with when the config lists no gradient-free attack

# Models that exist only as an export (config key models.*.arch KIND:FILE), audited as a black box
# (cvaudit.net.export): every stage that needs only the model's outputs runs; those that need gradients or
# layers say why not, with this reason.
EXPORT_KINDS = {"onnx": "ONNX", "torchscript": "TorchScript"}
EXPORT_REASON = "the model is an export without gradients (a black box: only its outputs can be read)"


def is_export_arch(arch: str) -> bool:
    """config key models.*.arch names an ONNX or TorchScript export."""
    return arch.split(":", 1)[0] in EXPORT_KINDS and ":" in arch


def attack_options(adversarial: dict, attack: str) -> dict:
    """The part of config key robustness.adversarial that the jobs of `attack` read."""
    return {k: adversarial[k] for k in SHARED_ATTACK_OPTIONS + ATTACKS[attack].reads}
