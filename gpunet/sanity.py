"""Two checks to run before a long training job (Karpathy's "recipe"):

- `initial_loss_check`: at initialisation a classifier should be unsure, so its cross-entropy should be
  close to log(C). Far above means over-confident logits (too large an init scale on the last layer).
- `overfit_tiny_batch`: a model that cannot drive a handful of samples to 100% accuracy has a bug
  (wrong gradients, wiring, learning rate) that more data will only hide.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from gpunet.autograd import Tensor
from gpunet.nn import SoftmaxCrossEntropy
from gpunet.optim import Adam

log = logging.getLogger("gpunet")


@dataclass
class InitialLossReport:
    loss: float
    expected: float  # log(num_classes)
    ok: bool

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "suspicious: expected about log(C)"
        return f"initial loss {self.loss:.4f} vs log(C) = {self.expected:.4f} ({verdict})"


def _eval_logits(model, X):
    was_training = model.training
    model.eval()
    try:
        return model(X)
    finally:
        model.train(was_training)


def initial_loss_check(model, X, y, num_classes: int, rtol: float = 0.25) -> InitialLossReport:
    """Cross-entropy of the untrained `model` (eval mode, no side effects) on (X, y), compared with
    log(num_classes); ok when within rtol of it. Host arrays are moved to the model's device.
    Logs a warning when not ok; returns the report either way."""
    be = model.backend
    logits = _eval_logits(model, be.asarray(X))
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"initial_loss_check: model output {tuple(logits.shape)} is not (N, {num_classes})")
    loss = float(SoftmaxCrossEntropy()(logits, be.asarray(y)))
    expected = math.log(num_classes)
    report = InitialLossReport(loss, expected, abs(loss - expected) <= rtol * expected)
    if not report.ok:
        log.warning("gpunet sanity: %s", report)
    return report


def overfit_tiny_batch(model, X, y, steps: int = 200, lr: float = 1e-2, optimizer=None) -> float:
    """Train `model` in place on the small batch (X, y) for `steps` full-batch steps (Adam(lr) unless an
    optimizer is given), then return its accuracy on that batch in eval mode (a float in [0, 1]).
    The model's mode is restored. Anything below 1.0 for a few dozen samples deserves a look."""
    be = model.backend
    X, y = be.asarray(X), be.asarray(y)
    opt = optimizer if optimizer is not None else Adam(model.parameters(), lr=lr)
    crit = SoftmaxCrossEntropy()
    was_training = model.training
    model.train()
    for _ in range(int(steps)):
        opt.zero_grad()
        loss = crit(model(Tensor(X, backend=be)), y)
        if loss.requires_grad:  # a fully frozen model has nothing to differentiate
            loss.backward()
        opt.step()
    model.train(was_training)
    pred = be.asnumpy(_eval_logits(model, X).argmax(axis=1))
    return float(np.mean(pred == be.asnumpy(y)))
