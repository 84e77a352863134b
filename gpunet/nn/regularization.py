"""The L2 penalty as the course notes write it: J = loss + lambda / (2 m) * sum of ||W||^2 over the weights.

    crit = nn.L2Penalized(nn.SoftmaxCrossEntropy(), model, lam=0.01)
    loss = crit(model(x), y)          # the data loss plus the penalty: the loss rises when lambda does

m is the batch's size (the number of examples the data loss averages over), so the penalty's gradient
(lam / m) * W is the same per example whatever the batch. The penalty enters the loss, so the number you see
(train and validation loss) includes it, as Keras reports it; that is what makes the sanity check "adding
regularisation raises the loss" visible. Weight decay adds the same gradient without touching the loss:
for SGD, `weight_decay = lam / m` on the same parameters gives identical updates (PyTorch's `weight_decay`
is exactly this, applied inside the optimizer). For Adam the two differ: the penalty's gradient is rescaled
by Adam's statistics (Adam's `weight_decay`), AdamW's decoupled decay is not.
Like `optim.decay_groups`, only weights (2-D and up) are penalised, not biases or BatchNorm parameters.
"""
from __future__ import annotations

import math

from gpunet.autograd import Tensor


class L2Penalized:
    """`loss_fn(input, target) + lam / (2 * len(target)) * sum(W ** 2)` over the model's weights (ndim >= 2).
    Works on Tensors (training: the penalty is differentiated) and on arrays (evaluation)."""

    def __init__(self, loss_fn, model, lam: float):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"L2Penalized: lam must be a finite number >= 0, got {lam!r}")
        self.loss_fn, self.lam = loss_fn, float(lam)
        self.weights = [p for p in model.parameters() if p.ndim >= 2]

    def penalty(self, m: int, tensors: bool):
        """lam / (2 m) * sum ||W||^2, as a Tensor (tensors=True) or an array."""
        terms = [(w * w).sum() if tensors else (w.data * w.data).sum() for w in self.weights]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total * (self.lam / (2 * m))

    def __call__(self, input, target):
        loss = self.loss_fn(input, target)
        if not self.weights or self.lam == 0:
            return loss
        return loss + self.penalty(len(target), isinstance(loss, Tensor))

    def __repr__(self) -> str:
        return f"L2Penalized({self.loss_fn!r}, lam={self.lam:g})"
