"""Losses: `loss = crit(input, target)` then `dinput = crit.backward()`.

The loss is a 0-d array on the input's device (a NumPy scalar on NumPy), in the input's dtype: no
device->host synchronisation per step; `float(loss)` when a number is needed. Losses have no
parameters and no device of their own (they follow their input; a target on another device raises
DeviceError). The forward always keeps its cache, whatever the model's mode; backward frees it.
`backward(dloss=1.0)` scales the gradient (dloss is d(total)/d(loss)).
"""
from __future__ import annotations

from gpunet import functional as F


class _Loss:
    def __init__(self):
        self._cache = None

    def __call__(self, input, target):
        return self.forward(input, target)

    def _take(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called without a preceding forward() "
                               f"(each backward frees the cache)")
        cache, self._cache = self._cache, None
        return cache

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(_Loss):
    """Mean over the batch of -log softmax(logits)[label]; logits (N, C), integer labels (N,) in [0, C).
    check_range=False skips the label range check, the one device->host sync of a CuPy forward, for
    loops that validated their labels upstream (dtype and shape are always checked)."""

    def __init__(self, check_range: bool = True):
        super().__init__()
        self.check_range = bool(check_range)

    def forward(self, logits, labels):
        F.check_labels(labels, logits, "SoftmaxCrossEntropy", self.check_range)
        log_probs = F.log_softmax(logits, axis=1)
        self._cache = (log_probs, labels)
        return F.nll_loss(log_probs, labels)

    def backward(self, dloss=1.0):
        log_probs, labels = self._take()
        return F.softmax_cross_entropy_backward(log_probs, labels, dloss)


class BCEWithLogits(_Loss):
    """Mean over all elements of binary cross-entropy on sigmoid(logits); targets in [0, 1], same shape."""

    def forward(self, logits, targets):
        loss = F.bce_with_logits(logits, targets)
        self._cache = (logits, targets)
        return loss

    def backward(self, dloss=1.0):
        logits, targets = self._take()
        return F.bce_with_logits_backward(logits, targets, dloss)


class MSELoss(_Loss):
    """Mean over all elements of (input - target)^2."""

    def forward(self, input, target):
        loss = F.mse_loss(input, target)
        self._cache = (input, target)
        return loss

    def backward(self, dloss=1.0):
        y, target = self._take()
        return F.mse_loss_backward(y, target, dloss)
