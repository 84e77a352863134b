"""Gradient clipping, in place on `param.grad` (PyTorch's clip_grad_norm_ / clip_grad_value_)."""
from __future__ import annotations

import math
import warnings

from gpunet.functional import array_module
from gpunet.optim.optimizer import _as_param_list


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = True) -> float:
    """Scale all gradients together so their global norm (the norm of the per-parameter norms) is at most
    max_norm; return the norm before clipping as a float (one device->host sync). Parameters without a
    gradient are ignored. A non-finite norm raises FloatingPointError naming the offending parameters, or,
    with error_if_nonfinite=False, warns and leaves the gradients unchanged."""
    params = _as_param_list(parameters, "clip_grad_norm_")
    grads = [(i, p.grad) for i, p in enumerate(params) if p.grad is not None]
    if not grads:
        return 0.0
    xp = array_module(grads[0][1])
    norm_type = float(norm_type)
    norms = xp.stack([xp.linalg.norm(g.reshape(-1), ord=norm_type) for _, g in grads])
    total = float(xp.linalg.norm(norms, ord=norm_type))
    if not math.isfinite(total):
        bad = [f"#{i} {tuple(g.shape)}" for i, g in grads if not bool(xp.isfinite(g).all())]
        msg = (f"clip_grad_norm_: the total gradient norm is {total} (non-finite); parameters with non-finite "
               f"gradients: {', '.join(bad) or 'none (the norm overflowed)'}. Lower the learning rate or check the "
               f"inputs and loss for NaN/inf")
        if error_if_nonfinite:
            raise FloatingPointError(msg + "; pass error_if_nonfinite=False to skip clipping with a warning")
        warnings.warn(msg + "; gradients left unclipped", RuntimeWarning, stacklevel=2)
        return total
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        for _, g in grads:
            g *= coef
    return total


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value], in place."""
    v = float(clip_value)
    for p in _as_param_list(parameters, "clip_grad_value_"):
        if p.grad is not None:
            array_module(p.grad).clip(p.grad, -v, v, out=p.grad)
