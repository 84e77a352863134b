"""Batch normalisation on oneDNN over (N, C) or (N, C, H, W), with the NumpyOps contract.

NumpyOps sends it Blocked activations (gpunet.onednn.blocked): there oneDNN's jit kernels run in the conv's
layout, 2-5x faster than the NumPy sums on resnet-small's shapes. On NCHW arrays oneDNN's kernels are slower
than NumPy's (docs/onednn.md), so NCHW calls stay on NumPy; these functions still take arrays (tests).

Training forward: oneDNN's forward-training primitive with scale and shift (gamma, beta) computes
y and the batch mean and biased variance (oneDNN's CPU kernels take the variance as the mean of
(x - mean)^2 in a second pass, so data far from zero stays accurate). We return (y, mean, invstd)
with invstd = 1/sqrt(var + eps) in float64 rounded to float32, and update the running statistics
in place as NumpyOps does: running = (1 - momentum)*running + momentum*batch, unbiased variance
var*M/(M - 1), float64 arithmetic.

Eval forward: not here. oneDNN's inference primitive on NCHW ran slower than NumPy; the oneDNN engine
runs batch-norm inference as one binary pass instead (gpunet.onednn.binary, called by NumpyOps with the
NumPy engine's coefficients).

Backward: the contract hands us (dy, x, gamma, mean, invstd), while oneDNN's backward wants the
variance and eps: we pass var = 1/invstd^2 (float64, rounded to float32) with eps = 0, so oneDNN's
1/sqrt(var + eps) returns invstd to within an ulp or two of float32 whatever eps the forward used. (dx, dgamma, dbeta)
come from oneDNN's backward primitive (prop `backward`, scale and shift).

Data far from zero. oneDNN normalises with x - mean where mean is float32, so its error grows with
|mean|/std: at 1000 + 2*noise, y was off by 3e-5 and dgamma by 1.2e-4 (relative to their scale), where
the NumPy path's shifted scheme stays near 1e-7. So a channel whose batch mean lies more than
FAR_FROM_ZERO standard deviations from zero raises Declined, and the caller (NumpyOps) runs its own path (the
training forward decides after oneDNN's statistics, before touching the running statistics; the backward
from mean*invstd):
below that bound the extra error is at most about FAR_FROM_ZERO float32 ulps of y.

Other differences from the NumPy path: oneDNN's API takes eps as a float32 (float32(1e-5) differs from
1e-5 by 2.5e-13, far below float32 resolution of var + eps for any realistic variance); summation
order is oneDNN's, so results agree to float32 rounding, not bitwise. float64 is refused (TypeError).
"""
from __future__ import annotations

import numpy as np

from gpunet.onednn import _capi as C
from gpunet.onednn import engine as E
from gpunet.onednn.blocked import Blocked, plain_layout, to_layout
from gpunet.onednn.engine import Declined, PrimitiveDesc, cache, engine, f32, plain
from gpunet.ops.geometry import batch_norm_geometry

_SCALE_SHIFT = C.dnnl_use_scale | C.dnnl_use_shift
FAR_FROM_ZERO = 8.0     # |batch mean| * invstd above this: NumpyOps (see the module docstring)
_FAR = f"batch norm: a channel's batch mean lies more than {FAR_FROM_ZERO:g} standard deviations from zero"


def _far(mean, invstd) -> bool:
    return not bool(np.all(np.abs(mean.astype(np.float64)) * invstd.astype(np.float64) <= FAR_FROM_ZERO))


def applies(x) -> bool:
    """True when oneDNN serves the call: a float32 NumPy array or a Blocked activation (the vectors must be
    float32 too)."""
    return isinstance(x, Blocked) or (isinstance(x, np.ndarray) and x.dtype == np.float32)


class _Plan:
    """The training forward and backward primitives of one layout (shape) and eps."""

    def __init__(self, lay, eps32: float):
        shape = lay.shape
        self.layout, self.c = lay, shape[1]
        self.what = (f"batch normalization (src {shape} f32{'' if lay.is_plain else ' blocked'}, eps {eps32:g}, "
                     f"training)")
        self.x_md, self.v_md = lay.md, plain((self.c,))
        self.fwd = PrimitiveDesc("dnnl_batch_normalization_forward_primitive_desc_create", "forward " + self.what,
                                 engine().engine, C.dnnl_forward_training, self.x_md.h, self.x_md.h, eps32,
                                 _SCALE_SHIFT, None)
        self.bwd = PrimitiveDesc("dnnl_batch_normalization_backward_primitive_desc_create",
                                 "backward " + self.what, engine().engine, C.dnnl_backward, self.x_md.h,
                                 self.x_md.h, self.x_md.h, eps32, _SCALE_SHIFT, self.fwd.h, None)


def _plan(lay, eps) -> _Plan:
    eps32 = float(np.float32(eps))
    return cache.get(("batch_norm", lay, eps32), lambda: _Plan(lay, eps32))


def _vectors(op, **vs):
    return {k: f32(op, k, v) for k, v in vs.items()}


def _as_blocked(op: str, what: str, a) -> Blocked:
    """a (an array or a Blocked) as a Blocked: an array is wrapped in its plain layout, no copy."""
    if isinstance(a, Blocked):
        return a
    a = f32(op, what, a)
    return to_layout(a, plain_layout(a.shape))


def _same_form(result: Blocked, like):
    """result in `like`'s form: the NCHW array for an array input, the Blocked for a Blocked input."""
    return result if isinstance(like, Blocked) else result.to_plain()


def batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    """(y, mean, invstd); running_mean / running_var updated in place (see the module docstring). x: an
    array, or a Blocked activation (y is then a Blocked in x's layout: oneDNN's jit kernels)."""
    xb = _as_blocked("batch_norm", "input", x)
    v = _vectors("batch_norm", gamma=gamma, beta=beta)
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise TypeError(f"batch_norm (oneDNN): expected {name} as a float32 NumPy array, got "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
    n, c, s = batch_norm_geometry("batch_norm", xb.shape, training=True, gamma=gamma.shape, beta=beta.shape,
                                  running_mean=running_mean.shape, running_var=running_var.shape)
    m = n * s
    plan = _plan(xb.layout, eps)
    y, mean, var = Blocked.empty(xb.layout), E.output(c), E.output(c)
    plan.fwd.execute({C.DNNL_ARG_SRC: (plan.x_md, xb.buf), C.DNNL_ARG_DST: (plan.x_md, y.buf),
                      C.DNNL_ARG_SCALE: (plan.v_md, v["gamma"]), C.DNNL_ARG_SHIFT: (plan.v_md, v["beta"]),
                      C.DNNL_ARG_MEAN: (plan.v_md, mean), C.DNNL_ARG_VARIANCE: (plan.v_md, var)})
    var64 = var.astype(np.float64)
    invstd = 1.0 / np.sqrt(var64 + float(eps))
    if _far(mean, invstd):
        raise Declined(_FAR)
    momentum = float(momentum)
    running_mean[...] = (1.0 - momentum) * running_mean.astype(np.float64) + momentum * mean.astype(np.float64)
    running_var[...] = (1.0 - momentum) * running_var.astype(np.float64) + momentum * var64 * (m / (m - 1))
    return _same_form(y, x), mean, invstd.astype(np.float32)


def batch_norm_backward(dy, x, gamma, mean, invstd):
    """(dx, dgamma, dbeta) for the training forward (invstd carried in as var = 1/invstd^2, eps = 0). x and dy:
    arrays or Blocked activations; dy is brought into x's layout, and dx has x's form."""
    xb = _as_blocked("batch_norm backward", "input", x)
    if not isinstance(dy, Blocked):
        dy = f32("batch_norm backward", "dy", dy)
    v = _vectors("batch_norm backward", gamma=gamma, mean=mean, invstd=invstd)
    batch_norm_geometry("batch_norm backward", xb.shape, gamma=gamma.shape, mean=mean.shape, invstd=invstd.shape)
    if tuple(dy.shape) != tuple(xb.shape):
        raise ValueError(f"batch_norm backward: expected dy of shape {tuple(xb.shape)}, got {tuple(dy.shape)}")
    c = xb.shape[1]
    if _far(v["mean"], v["invstd"]):
        raise Declined(_FAR)
    plan = _plan(xb.layout, 0.0)
    dyb = to_layout(dy, xb.layout)
    inv64 = v["invstd"].astype(np.float64)
    var = (1.0 / (inv64 * inv64)).astype(np.float32)
    dx, dgamma, dbeta = Blocked.empty(xb.layout), E.output(c), E.output(c)
    plan.bwd.execute({C.DNNL_ARG_SRC: (plan.x_md, xb.buf), C.DNNL_ARG_DIFF_DST: (plan.x_md, dyb.buf),
                      C.DNNL_ARG_MEAN: (plan.v_md, v["mean"]), C.DNNL_ARG_VARIANCE: (plan.v_md, var),
                      C.DNNL_ARG_SCALE: (plan.v_md, v["gamma"]), C.DNNL_ARG_DIFF_SRC: (plan.x_md, dx.buf),
                      C.DNNL_ARG_DIFF_SCALE: (plan.v_md, dgamma), C.DNNL_ARG_DIFF_SHIFT: (plan.v_md, dbeta)})
    return _same_form(dx, x), dgamma, dbeta
