"""Losses: `loss = crit(input, target)`, a 0-d Tensor; `loss.backward()` differentiates everything before it.

The loss lives on the input's device, in the input's dtype: no device->host synchronisation per step;
`float(loss)` when a number is needed. Losses have no parameters and no device of their own (they follow
their input; a target on another device raises DeviceError).

Array API (kept for code written before autograd): called on plain arrays a loss returns a 0-d array,
and `crit.backward(dloss=1.0)` returns d(dloss * loss)/d(input) from the recorded node (dloss is
d(total)/d(loss)); each backward frees the record, whatever the model's mode.
"""
from __future__ import annotations

from gpunet import functional as F
from gpunet.autograd import array_module
from gpunet.autograd import functions as N
from gpunet.nn.module import Module


class _Loss(Module):
    _array_grad_args = 1  # the array API differentiates the input, not the target
    _follows_input = True  # no device of its own

    def forward(self, input, target):
        t = target.data if hasattr(target, "creator") else target
        self._validate(input.data, t)
        return self._node()(input, target)

    def backward(self, dloss=1.0):
        cache = self._cache
        dy = None
        if cache is not None:
            out = cache[2]
            dy = array_module(out.data).asarray(dloss, dtype=out.dtype) if not hasattr(dloss, "shape") else dloss
        return super().backward(dy if dy is not None else dloss)

    def _call_arrays(self, args, kwargs):
        training = self.training
        self.__dict__["training"] = True  # a loss's array forward always records, whatever the model's mode
        try:
            return super()._call_arrays(args, kwargs)
        finally:
            self.__dict__["training"] = training

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(_Loss):
    """Mean over the batch of -log softmax(logits)[label]; logits (N, C), integer labels (N,) in [0, C).
    check_range=False skips the label range check, the one device->host sync of a CuPy forward, for
    loops that validated their labels upstream (dtype and shape are always checked)."""

    def __init__(self, check_range: bool = True):
        super().__init__()
        self.check_range = bool(check_range)

    def _validate(self, logits, labels):
        F.check_labels(labels, logits, "SoftmaxCrossEntropy", self.check_range)

    _node = N.SoftmaxCrossEntropy


class BCEWithLogits(_Loss):
    """Mean over all elements of binary cross-entropy on sigmoid(logits); targets in [0, 1], same shape."""

    def _validate(self, logits, targets):
        F._check_same_shape(logits, targets, "bce_with_logits")

    _node = N.BCEWithLogits


class MSELoss(_Loss):
    """Mean over all elements of (input - target)^2."""

    def _validate(self, y, target):
        F._check_same_shape(y, target, "mse_loss")

    _node = N.MSELoss
