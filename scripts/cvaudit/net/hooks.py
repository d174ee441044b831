"""One owner for PyTorch hooks (as pytorch-grad-cam's ActivationsAndGradients): every hook a stage puts on
a model goes through Hooks, and is removed when the `with` block ends, after an error too. Forward hooks
here observe: what they return is dropped, so they can never replace a module's output. Backward hooks
may return a replacement gradient (guided backprop, deconvnet and the receptive-field probe rely on it)."""
from __future__ import annotations

import contextlib

from torch import nn


def _observe(fn):
    def hook(*args):
        fn(*args)  # whatever fn returns, the hook returns None: the output stays as it is
    return hook


def _observe_output(fn):
    """A forward hook that shows fn a layer's output tensor: the first of a tuple (a transformers layer returns
    its hidden states with its attention weights)."""
    def hook(module, inputs, output):
        fn(module, inputs, output[0] if isinstance(output, tuple) else output)
    return hook


class Hooks(contextlib.AbstractContextManager):
    def __init__(self):
        self._handles: list = []

    def forward(self, module: nn.Module, fn) -> Hooks:
        """fn(module, inputs, output) after the module's forward pass (a tuple output: its first tensor)."""
        self._handles.append(module.register_forward_hook(_observe_output(fn)))
        return self

    def forward_pre(self, module: nn.Module, fn) -> Hooks:
        """fn(module, inputs) before the module's forward pass."""
        self._handles.append(module.register_forward_pre_hook(_observe(fn)))
        return self

    def backward(self, module: nn.Module, fn) -> Hooks:
        """fn(module, grad_input, grad_output); a tuple it returns replaces grad_input."""
        self._handles.append(module.register_full_backward_hook(fn))
        return self

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False
