"""Every name a config can list, in one place that imports nothing heavy (the Snakefile reads it for
its wildcard constraints): the attribution methods, the invariance families and the attacks.

Each name points at its implementation as "module:object", imported only by the job that runs it.
Adding one is its implementation (a class or a function in the module of its family) plus one line
here, and its options, if any, in config/schema.yaml; tests/test_registries.py checks that the
schema's enums and defaults agree with these tables and that every entry resolves.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple


def load(ref: str):
    """The object a "module:name" reference points at."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# Attribution methods (config key explain.methods): classes with the interface of cvaudit.methods.base.
# "random" is the floor of the faithfulness checks: always run, never listed by a user.
METHODS = {
    "saliency": "cvaudit.methods.gradient:Saliency",
    "deconvnet": "cvaudit.methods.gradient:Deconvnet",
    "guided_backprop": "cvaudit.methods.gradient:GuidedBackprop",
    "cam": "cvaudit.methods.cam:CAM",
    "gradcam": "cvaudit.methods.cam:GradCAM",
    "guided_gradcam": "cvaudit.methods.cam:GuidedGradCAM",
    "occlusion": "cvaudit.methods.perturbation:Occlusion",
    "integrated_gradients": "cvaudit.methods.gradient:IntegratedGradients",
    "smoothgrad": "cvaudit.methods.gradient:SmoothGrad",
    "smoothgrad_sq": "cvaudit.methods.gradient:SmoothGradSquared",
    "vargrad": "cvaudit.methods.gradient:VarGrad",
    "input_x_gradient": "cvaudit.methods.gradient:InputXGradient",
    "deeplift": "cvaudit.methods.gradient:DeepLift",
    "deeplift_shap": "cvaudit.methods.gradient:DeepLiftShap",
    "lrp": "cvaudit.methods.relevance:LRP",
    "attention_rollout": "cvaudit.methods.transformer:AttentionRollout",
    "transformer_attribution": "cvaudit.methods.transformer:TransformerAttribution",
    "lime": "cvaudit.methods.perturbation:LIME",
    "shap": "cvaudit.methods.perturbation:SHAP",
    "kernel_shap": "cvaudit.methods.perturbation:KernelShap",
    "shapley_sampling": "cvaudit.methods.perturbation:ShapleySampling",
    "random": "cvaudit.methods.perturbation:RandomMap",
}
FLOOR_METHOD = "random"


class Family(NamedTuple):
    """An invariance family (config key robustness.invariance): fn(x, severity, gen, seeds) on images in
    [0, 1]; `identity` is the severity that leaves an image unchanged."""
    ref: str
    identity: float


FAMILIES = {
    "translate": Family("cvaudit.invariance:translate", 0.0),
    "rotate": Family("cvaudit.invariance:rotate", 0.0),
    "scale": Family("cvaudit.invariance:scale", 1.0),
    "brightness": Family("cvaudit.invariance:brightness", 1.0),
    "contrast": Family("cvaudit.invariance:contrast", 1.0),
    "noise": Family("cvaudit.invariance:noise", 0.0),
    "blur": Family("cvaudit.invariance:blur", 0.0),
    "jpeg": Family("cvaudit.invariance:jpeg", 100),
}


class Attack(NamedTuple):
    """An attack (config key robustness.adversarial.attacks): fn(net, x, y, eps, options, seed) ->
    (adversarial images, {component: fooled}). `reads`: the keys of robustness.adversarial its job
    reads beyond those every attack job reads (SHARED_ATTACK_OPTIONS), so changing one attack's
    settings reruns that attack's jobs alone."""
    ref: str
    reads: tuple[str, ...] = ()


SHARED_ATTACK_OPTIONS = ("max_images", "epsilons", "examples", "example_epsilon")
ATTACKS = {
    "fgsm": Attack("cvaudit.adversarial:fgsm"),
    "pgd": Attack("cvaudit.adversarial:pgd", ("pgd",)),
    "autoattack": Attack("cvaudit.adversarial:autoattack", ("autoattack", "masking", "check_epsilon")),
}


def attack_options(adversarial: dict, attack: str) -> dict:
    """The part of config key robustness.adversarial that the jobs of `attack` read."""
    return {k: adversarial[k] for k in SHARED_ATTACK_OPTIONS + ATTACKS[attack].reads}
