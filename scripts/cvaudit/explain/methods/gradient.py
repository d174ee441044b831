"""Gradient methods: saliency, guided backprop and deconvnet (for ReLU6 too: captum overrides only
nn.ReLU), integrated gradients with its completeness check."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from cvaudit import CvauditError
from cvaudit.explain.methods.base import AttributionMethod, Completeness, NotApplicable, _input_grad, out_of_place
from cvaudit.net.hooks import Hooks
from cvaudit.net.pixel_space import blur


class Saliency(AttributionMethod):
    name, label = "saliency", "Vanilla gradient"
    reads = ("Simonyan et al.: the largest absolute gradient of the class score over the colour channels; bright "
             "pixels are those whose small change would most change the score. Noisy by nature.")

    def attribute(self, net, x, target):
        from captum.attr import Saliency as CaptumSaliency
        return CaptumSaliency(net).attribute(x, target=target, abs=True).amax(1).detach()


RELU_FAMILY = (nn.ReLU, nn.ReLU6)
ALLOWED = (nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.Identity)


class ReluBackwardOverride(contextlib.AbstractContextManager):
    """Owns the backward hooks that turn a plain gradient into guided backprop or deconvnet, on every
    ReLU and ReLU6 module, and always removes them (and restores `inplace`) on exit.

    guided: gradient through the rectifier as usual, then only its positive part (Springenberg et al.);
    deconv: only the positive part of the incoming gradient, ignoring the forward mask (Zeiler & Fergus).
    Any other activation module (SiLU, GELU, ...) is refused: its gradient would pass unmodified and
    the result would be a plain gradient under another name.
    """

    def __init__(self, net: nn.Module, mode: str):
        self.net, self.mode, self.hooks, self.inplace = net, mode, Hooks(), []

    @staticmethod
    def check(net: nn.Module) -> list[nn.Module]:
        relus, other = [], set()
        for m in net.modules():
            if isinstance(m, RELU_FAMILY):
                relus.append(m)
            elif type(m).__module__.startswith(("torch.nn.modules.activation", "timm.layers.activations")) \
                    and not isinstance(m, ALLOWED):
                other.add(type(m).__name__)
        if other:
            raise NotApplicable(f"the model uses {', '.join(sorted(other))} activations; guided backprop and "
                                "deconvnet are defined for ReLU/ReLU6 only")
        if not relus:
            raise NotApplicable("the model has no ReLU/ReLU6 modules to modify")
        return relus

    def __enter__(self):
        for m in self.check(self.net):
            self.inplace.append((m, m.inplace))
            m.inplace = False  # backward hooks cannot see through in-place ops
            if self.mode == "guided":
                hook = lambda mod, gin, gout: (gin[0].clamp(min=0),)  # noqa: E731
            else:
                hook = lambda mod, gin, gout: (gout[0].clamp(min=0),)  # noqa: E731
            self.hooks.backward(m, hook)
        return self

    def __exit__(self, *exc):
        self.hooks.remove()
        for m, flag in self.inplace:
            m.inplace = flag
        self.inplace = []
        return False


class GuidedBackprop(AttributionMethod):
    name, label = "guided_backprop", "Guided backprop"
    reads = ("Gradient passed back only where both the forward activation and the backward signal are positive: "
             "sharp, edge-like pictures of what excites the class. Known to be largely independent of the "
             "top layers (see the parameter-randomisation check).")
    mode = "guided"

    def attribute(self, net, x, target):
        with ReluBackwardOverride(net, self.mode):
            return _input_grad(net, x, target).abs().amax(1).detach()


class Deconvnet(GuidedBackprop):
    name, label = "deconvnet", "Deconvnet"
    reads = ("Zeiler & Fergus: the positive part of the signal is passed back through each rectifier whatever its "
             "forward activation; shows image structure that the network's filters respond to.")
    mode = "deconv"


class IntegratedGradients(AttributionMethod):
    name, label = "integrated_gradients", "Integrated gradients"
    defaults = {"steps": 16, "baseline": "black", "max_steps": 512, "tolerance": 0.05}
    reads = ("Sundararajan et al.: gradients averaged along the straight path from a baseline image (black by "
             "default) to the input, times the difference; the values add up to the score difference (steps are "
             "raised per image until they do, within the tolerance).")

    def __init__(self, batch_size: int = 64, **options):
        super().__init__(batch_size, **options)
        self.records: list[dict] = []  # per attribute() call: steps, relative completeness error, converged

    def baseline(self, x):
        b = self.options["baseline"]
        if b == "black":
            return torch.zeros_like(x)
        if b == "blur":
            return blur(x, max(x.shape[-1] / 16, 1.0))
        if b == "grey":
            return torch.full_like(x, 0.5)
        raise CvauditError(f"config key explain.integrated_gradients.baseline: '{b}'; use black, grey or blur")

    def attribute(self, net, x, target):
        """Completeness (sum of the map = F(x) - F(baseline), on the logit) is checked per image with
        captum's convergence delta; images that miss it by more than `tolerance` of the score difference
        are recomputed with twice the steps, up to max_steps. The rest are marked as not converged."""
        from captum.attr import IntegratedGradients as IG
        ig, base = IG(net), self.baseline(x)
        with torch.no_grad():
            diff = (net(x) - net(base)).gather(1, target.view(-1, 1))[:, 0].abs().float()
        allowed = self.options["tolerance"] * diff + 1e-4
        steps = self.options["steps"]
        attr = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
        used = torch.full((len(x),), steps, dtype=torch.long)
        err = torch.full((len(x),), float("inf"))
        ok = torch.zeros(len(x), dtype=torch.bool)
        todo = torch.arange(len(x), device=x.device)
        while len(todo):
            internal = max(len(todo), self.batch_size)  # captum splits the N x steps path images into calls of this size
            a, delta = ig.attribute(x[todo], baselines=base[todo], target=target[todo], n_steps=steps,
                                    internal_batch_size=internal, return_convergence_delta=True)
            attr[todo] = a.sum(1).detach().float()
            used[todo.cpu()] = steps
            d = delta.detach().abs().float()
            err[todo.cpu()] = (d / diff[todo].clamp_min(1e-12)).cpu()
            ok[todo.cpu()] = (d <= allowed[todo]).cpu()
            todo = todo[d > allowed[todo]]
            if steps * 2 > self.options["max_steps"]:
                break
            steps *= 2
        self.records.append({"steps": used.numpy(), "completeness_error": err.numpy(), "converged": ok.numpy()})
        return attr

    @contextlib.contextmanager
    def at_most(self, steps: int):
        """Within the block no image gets more than `steps` steps. The parameter-randomisation check compares
        maps at the step count the trained model's maps needed: a randomised model's maps rarely meet
        completeness, and refining them to max_steps would cost many times the map itself for no gain."""
        old = self.options["max_steps"]
        self.options["max_steps"] = max(int(steps), int(self.options["steps"]))
        try:
            yield
        finally:
            self.options["max_steps"] = old

    def model_passes(self, h, w):
        return self.options["steps"]


class SmoothGrad(AttributionMethod):
    """Smilkov et al.'s SmoothGrad through captum's NoiseTunnel on the plain gradient: gradients of `samples`
    noisy copies of each image (Gaussian, sigma = `noise` x the image's value range), averaged. Each image's
    noise comes from its own generator (seed and its place in the audit set), so a map does not depend on
    its batch or shard."""
    name, label = "smoothgrad", "SmoothGrad"
    defaults = {"samples": 16, "noise": 0.15, "seed": 0}
    nt_type = "smoothgrad"
    reads = ("Smilkov et al.: the gradient averaged over noisy copies of the image; less speckled than the vanilla "
             "gradient, brightest where small changes move the class score most.")

    def _tunnel(self, net, x, target):
        from captum.attr import NoiseTunnel
        from captum.attr import Saliency as CaptumSaliency

        from cvaudit.net.pixel_space import image_seed
        index = getattr(self, "index", None)
        index = range(len(x)) if index is None else [int(i) for i in index]
        out = []
        for k, j in zip(range(len(x)), index):
            xi = x[k:k + 1]
            sigma = float(self.options["noise"]) * float(xi.max() - xi.min()) or float(self.options["noise"])
            with torch.random.fork_rng(devices=[xi.device] if xi.is_cuda else []):
                torch.manual_seed(image_seed(int(self.options["seed"]), j))
                a = NoiseTunnel(CaptumSaliency(net)).attribute(
                    xi, nt_type=self.nt_type, nt_samples=int(self.options["samples"]), stdevs=sigma,
                    nt_samples_batch_size=max(1, self.batch_size), target=target[k:k + 1], abs=False)
            out.append(a.detach())
        return torch.cat(out) if out else torch.zeros_like(x)

    def attribute(self, net, x, target):
        return self._tunnel(net, x, target).abs().amax(1)

    def model_passes(self, h, w):
        return int(self.options["samples"])


class SmoothGradSquared(SmoothGrad):
    name, label = "smoothgrad_sq", "SmoothGrad²"
    nt_type = "smoothgrad_sq"
    reads = ("The mean of the squared gradient over noisy copies, summed over colour channels: with VarGrad, the "
             "only methods that beat a random ranking under ROAR (Hooker et al. 2019).")

    def attribute(self, net, x, target):
        return self._tunnel(net, x, target).sum(1)


class VarGrad(SmoothGradSquared):
    name, label = "vargrad", "VarGrad"
    nt_type = "vargrad"
    reads = ("The variance of the gradient over noisy copies, summed over colour channels (Adebayo et al.; Hooker "
             "et al.): where the gradient is unstable, it is large.")


class InputXGradient(AttributionMethod):
    name, label = "input_x_gradient", "Gradient × input"
    reads = ("Shrikumar et al.: the gradient times the pixel values, summed over colour channels; signed (negative: "
             "evidence against the class), and blind to what a black pixel could contribute.")

    def attribute(self, net, x, target):
        from captum.attr import InputXGradient as CaptumIxG
        return CaptumIxG(net).attribute(x, target=target).sum(1).detach()


class DeepLift(Completeness, AttributionMethod):
    """Shrikumar et al.'s DeepLIFT (rescale rule) through captum, from a black baseline. Its promise is
    completeness: the map sums to F(x) - F(baseline) on the logit. It holds through linear layers and the
    rescale rule's non-linearities (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus); captum's max-pooling rule
    misses it, by as much as the network's pooling makes it (the report shows the error measured on each model's
    own audit images), and through any other non-linearity
    (ReLU6, SiLU, GELU) the plain gradient passes: each call records the relative completeness error per
    image (`records`), and the report flags a model on which the method breaks its own axiom."""
    name, label = "deeplift", "DeepLIFT (rescale)"
    defaults = {"tolerance": 0.05}
    reads = ("Shrikumar et al.: each pixel's share of the difference between the class score and the score of a black "
             "image, propagated with the rescale rule; the values add up to that difference.")
    promise = "its map sums to F(x) − F(black) on the logit"
    caveat = ("the rescale rule covers ReLU, ELU, LeakyReLU, Sigmoid, Tanh and Softplus; captum's max-pooling rule only "
              "approximates it, and through any other non-linearity, such as ReLU6 or SiLU, the plain gradient passes")

    def _baselines(self, x):
        return torch.zeros_like(x)

    captum, paired = "DeepLift", True  # captum's class; one baseline per image (DeepLIFT) or a background (Deep SHAP)

    def attribute(self, net, x, target):
        import captum.attr
        base = self._baselines(x)
        explainer = getattr(captum.attr, self.captum)(net)
        # One image (with its baselines) per call: captum's max-pooling rule divides by input differences, which
        # amplifies the rounding that differs between batch sizes (2.5% of a map's range between a call of 36 and
        # one of 12 on the tests' tiny CNN), so a batched map would depend on its shard.
        with out_of_place(net):
            a = torch.cat([explainer.attribute(x[k:k + 1], baselines=base[k:k + 1] if self.paired else base,
                                               target=target[k:k + 1]) for k in range(len(x))])
        with torch.no_grad():  # the promise, per image: against its own baseline, or the background's mean
            fx = net(x).gather(1, target.view(-1, 1))[:, 0]
            fb = net(base).gather(1, target.view(-1, 1))[:, 0] if self.paired else \
                self._background_scores(net, base)[:, target].mean(0)
        self.check(a.sum((1, 2, 3)), fx - fb)
        return a.sum(1).detach()

    def _background_scores(self, net, base):
        """F(background), computed once per network (the sanity check's randomised copies are others)."""
        cache = self.__dict__.setdefault("_scores", {})
        key = (id(net), base.data_ptr(), tuple(base.shape))
        if key not in cache or cache[key][0]() is not net:
            import weakref
            cache[key] = (weakref.ref(net), net(base))
        return cache[key][1]


class DeepLiftShap(DeepLift):
    """Lundberg & Lee's Deep SHAP through captum's DeepLiftShap: DeepLIFT from each image of a background
    set, averaged. The background is `background` images of the audit set drawn with the seed (the explain
    stage sets it, the same for every shard); without one (a bare call) it is black, white and `background`
    - 2 uniform greys. The map sums to F(x) minus the background's mean score."""
    name, label = "deeplift_shap", "Deep SHAP"
    defaults = {"tolerance": 0.05, "background": 8}
    reads = ("Lundberg & Lee: DeepLIFT from each image of a background set drawn from the audit set, averaged (an "
             "approximation of Shapley values); the values add up to the class score minus the background's mean score.")
    promise = "its map sums to F(x) minus the background's mean F on the logit"
    background: torch.Tensor | None = None

    def _baselines(self, x):
        k = max(2, int(self.options["background"]))
        if self.background is None or self.background.shape[1:] != x.shape[1:]:  # a bare call: k greys, made once
            self.background = torch.linspace(0, 1, k, device=x.device).view(-1, 1, 1, 1).expand(k, *x.shape[1:]).contiguous()
        self.background = self.background.to(x.device, x.dtype)
        return self.background

    captum, paired = "DeepLiftShap", False

    def model_passes(self, h, w):
        return max(2, int(self.options["background"]))
