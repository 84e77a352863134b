"""Synchronised batch norm: the statistics of the global batch, whichever rank holds which rows.

Forward, per channel, two allreduces (two passes, so no sum-of-squares cancellation): first the sums of
x and the element count, giving the global mean; then the sums of (x - mean)^2, giving the global biased
variance. Every rank normalises with them and updates its running statistics identically (unbiased
variance, PyTorch's momentum rule). Sums are accumulated and sent in float64.

Backward, one allreduce of the per-channel sums of dy and dy * xhat. Each rank's dy is the gradient of its
own mean loss (its n_r of the global N elements per channel), and the gradient reducer later weighs each
rank's parameter gradients by n_r / N; so the sums are sent weighted by n_r / N, and

    dx = gamma * invstd * (dy - S1 / n_r - xhat * S2 / n_r),  S = sum_r (n_r / N) * sum_{rank r}(...),

is this rank's share of the global batch's dx in the same units. dgamma and dbeta are the local sums; the
gradient reducer sums them over ranks like every other gradient. With one rank this is exactly batch norm.
"""
from __future__ import annotations

from gpunet.autograd.core import Node, array_module


class SyncBatchNormTrain(Node):
    def __init__(self, comm, running_mean, running_var, momentum, eps):
        self.comm, self.rm, self.rv, self.momentum, self.eps = comm, running_mean, running_var, momentum, eps

    def forward(self, x, gamma, beta):
        xp = array_module(x)
        c = x.shape[1]
        axes = tuple(a for a in range(x.ndim) if a != 1)
        view = (1, c) + (1,) * (x.ndim - 2)
        n_local = x.size // c
        buf = xp.empty(c + 1, dtype=xp.float64)
        buf[:c] = x.sum(axis=axes, dtype=xp.float64)
        buf[c] = n_local
        self.comm.allreduce_inplace(buf, "sync-BN mean")
        total = buf[c:]  # stays on the device
        mean = buf[:c] / total
        d = x - mean.astype(x.dtype).reshape(view)
        m2 = (d.astype(xp.float64) ** 2).sum(axis=axes)
        self.comm.allreduce_inplace(m2, "sync-BN variance")
        var = m2 / total
        invstd = 1.0 / xp.sqrt(var + self.eps)
        m = float(self.momentum)
        self.rm[...] = ((1 - m) * self.rm + m * mean).astype(self.rm.dtype)
        self.rv[...] = ((1 - m) * self.rv + m * var * total / xp.maximum(total - 1, 1)).astype(self.rv.dtype)
        self.rm = self.rv = None
        xhat = d * invstd.astype(x.dtype).reshape(view)
        self.xhat, self.gamma, self.invstd, self.n_local, self.total = xhat, gamma, invstd, n_local, total
        return xhat * gamma.reshape(view) + beta.reshape(view)

    def backward(self, gy):
        xp = array_module(gy)
        c = gy.shape[1]
        axes = tuple(a for a in range(gy.ndim) if a != 1)
        view = (1, c) + (1,) * (gy.ndim - 2)
        sdy = gy.sum(axis=axes, dtype=xp.float64)
        sdyx = (gy * self.xhat).sum(axis=axes, dtype=xp.float64)
        dx = None
        if self.needs(0):
            buf = xp.concatenate([sdy, sdyx]) * (self.n_local / self.total)
            self.comm.allreduce_inplace(buf, "sync-BN backward")
            s1 = (buf[:c] / self.n_local).astype(gy.dtype).reshape(view)
            s2 = (buf[c:] / self.n_local).astype(gy.dtype).reshape(view)
            scale = (self.gamma * self.invstd.astype(gy.dtype)).reshape(view)
            dx = scale * (gy - s1 - self.xhat * s2)
        return dx, sdyx.astype(gy.dtype), sdy.astype(gy.dtype)


def convert_sync_batchnorm(model, comm):
    """Make every BatchNorm1d/2d of `model` normalise with the global batch's statistics over `comm`'s
    ranks (in training mode); returns the model. `comm=None` turns it back into plain batch norm."""
    for m in model.modules():
        # the batch norms (nn.layers imports this module, so it is told by its attributes, not its class)
        if hasattr(m, "running_mean") and hasattr(m, "comm"):
            m.comm = comm
    return model
