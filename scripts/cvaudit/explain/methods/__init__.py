"""Attribution methods behind one interface (methods.base), one module per family. Captum, lime and
shap do the work (zennit LRP's); written here is only what none of them does: guided backprop / deconvnet for
ReLU6, CAM, and the glue that batches every model call."""
from cvaudit.core import registry as _registry
from cvaudit.explain.methods.base import (
    AttributionMethod,
    Completeness,
    NotApplicable,
    attribute_batched,
    get_method,
    refuse_export,
)
from cvaudit.explain.methods.cam import CAM, GradCAM, GuidedGradCAM, block_outputs, layer_name
from cvaudit.explain.methods.gradient import (
                                              Deconvnet,
                                              DeepLift,
                                              DeepLiftShap,
                                              GuidedBackprop,
                                              InputXGradient,
                                              IntegratedGradients,
                                              Saliency,
                                              SmoothGrad,
                                              SmoothGradSquared,
                                              VarGrad,
)
from cvaudit.explain.methods.perturbation import (
                                              LIME,
                                              SHAP,
                                              KernelShap,
                                              Occlusion,
                                              RandomMap,
                                              ShapleySampling,
                                              superpixels,
                                              target_probability_fn,
)

# Every method by name (cvaudit.core.registry.METHODS, the one list), for code that wants them all.
METHODS = {name: _registry.load(ref) for name, ref in _registry.METHODS.items()}

__all__ = ["METHODS", "AttributionMethod", "Completeness", "NotApplicable", "attribute_batched", "get_method", "refuse_export",
           "CAM", "GradCAM", "GuidedGradCAM", "block_outputs", "layer_name", "DeepLift", "DeepLiftShap", "Deconvnet", "GuidedBackprop",
           "InputXGradient", "SmoothGrad", "SmoothGradSquared", "VarGrad",
           "IntegratedGradients", "Saliency", "LIME", "SHAP", "KernelShap", "ShapleySampling", "Occlusion", "RandomMap", "superpixels",
           "target_probability_fn"]
