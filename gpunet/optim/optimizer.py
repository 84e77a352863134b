"""Optimizers with PyTorch's update rules (torch.optim documentation).

`params` is model.parameters(), or PyTorch-style groups that differ in weight decay only:
[{"params": weights, "weight_decay": 5e-4}, {"params": biases_and_norms, "weight_decay": 0.0}]
(`decay_groups(model, wd)` builds exactly these; per-group learning rates are
gpunet.transfer.GroupedOptimizer's). A group without "weight_decay" uses the optimizer's.

Written once against the array module of each parameter: state lives next to the parameter, on its
device, in its dtype. `step()` skips parameters with requires_grad False or grad None. Hyper-parameters
are plain attributes (`opt.lr = 0.01` works; schedulers set it). `state_dict()` holds host NumPy copies
of every state array plus Python step counts and the hyper-parameters; `load_state_dict()` moves the
arrays back to each parameter's device. Move the model before creating its optimizer.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet.backend import is_device_array
from gpunet.functional import array_module
from gpunet.nn.module import Parameter


def _as_param_list(params, who: str) -> list:
    params = [params] if isinstance(params, Parameter) else list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{who}: expected Parameters (model.parameters()), item {i} is {type(p).__name__}")
    return params


def _as_groups(params, who: str) -> tuple[list, list]:
    """(parameters, their weight decay or None for the optimizer's) from Parameters or group dicts."""
    params = [params] if isinstance(params, (Parameter, dict)) else list(params)
    if not any(isinstance(g, dict) for g in params):
        flat = _as_param_list(params, who)
        return flat, [None] * len(flat)
    flat, decays = [], []
    for i, group in enumerate(params):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{who}: parameter group {i} must be a dict with 'params' (do not mix groups and "
                            f"Parameters)")
        other = sorted(set(group) - {"params", "weight_decay"})
        if other:
            raise ValueError(f"{who}: parameter group {i} sets {', '.join(other)}; groups may differ in "
                             f"weight_decay only (per-group lr: gpunet.transfer.GroupedOptimizer)")
        if "weight_decay" in group:
            check_hyper(f"{who} group {i}", weight_decay=group["weight_decay"])
        ps = _as_param_list(group["params"], f"{who} group {i}")
        flat += ps
        decays += [group.get("weight_decay")] * len(ps)
    return flat, decays


def decay_groups(model, weight_decay: float) -> list[dict]:
    """Parameter groups that decay the weights (matrices, kernels: 2-D and up) but not the biases and the
    BatchNorm scales and shifts (1-D): decaying those only pulls the layer's output toward zero and fights
    normalisation, without limiting the model's capacity. Empty groups are left out."""
    decayed = [p for p in model.parameters() if p.ndim >= 2]
    kept = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _host(a):
    """A host copy that never aliases the live state."""
    return a.get() if is_device_array(a) else a.copy()


# Each numeric hyper-parameter's allowed interval: (low, high, high included). All must be finite.
HYPER_RANGES = {"lr": (0.0, float("inf"), False), "weight_decay": (0.0, float("inf"), False),
                "momentum": (0.0, 1.0, False), "dampening": (0.0, 1.0, True), "eps": (0.0, float("inf"), False),
                "alpha": (0.0, 1.0, True)}


class HyperParameterError(ValueError):
    """A hyper-parameter is not finite or outside its range; `name` and `value` say which (callers such
    as the CLI map the name to their own option)."""

    def __init__(self, message: str, name: str, value):
        super().__init__(message)
        self.name, self.value = name, value


def check_hyper(who: str, **hyper) -> None:
    """Raise HyperParameterError unless every numeric hyper-parameter is finite and in its HYPER_RANGES
    interval: the one place optimizer settings are validated (a NaN lr would silently destroy the weights)."""
    for k, v in hyper.items():
        if k not in HYPER_RANGES:
            continue
        lo, hi, hi_in = HYPER_RANGES[k]
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
        if not (ok and lo <= v and (v <= hi if hi_in else v < hi)):
            interval = f"[{lo:g}, {hi:g}{']' if hi_in else ')'}" if math.isfinite(hi) else f">= {lo:g}"
            raise HyperParameterError(f"{who}: invalid {k} {v!r} (must be a finite number "
                                      f"{'in ' if math.isfinite(hi) else ''}{interval})", k, v)


class Optimizer:
    _hyper: tuple = ()

    def __init__(self, params, **hyper):
        self.params, self._group_decay = _as_groups(params, type(self).__name__)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        check_hyper(type(self).__name__, **hyper)
        for k, v in hyper.items():
            setattr(self, k, v)
        self.state = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p, st, wd in zip(self.params, self.state, self._group_decay):
            if p.requires_grad and p.grad is not None:
                st["step"] = st.get("step", 0) + 1
                self._update(p, p.grad, st, self.weight_decay if wd is None else wd)

    def _update(self, p: Parameter, g, st: dict, weight_decay: float) -> None:
        raise TypeError(f"{type(self).__name__} does not define _update()")

    def state_dict(self) -> dict:
        state = {i: {k: (_host(v) if hasattr(v, "shape") else v) for k, v in st.items()}
                 for i, st in enumerate(self.state) if st}
        group = {k: getattr(self, k) for k in self._hyper}
        group["params"] = list(range(len(self.params)))
        group["param_weight_decay"] = list(self._group_decay)
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        name = type(self).__name__
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"{name}.load_state_dict: the saved optimizer has "
                             f"{sum(len(g['params']) for g in groups)} parameters, this one {len(self.params)}")
        new_state = [{} for _ in self.params]
        for i, st in state_dict["state"].items():
            p = self.params[int(i)]
            xp = array_module(p.data)
            for k, v in st.items():
                if hasattr(v, "shape") and np.ndim(v) > 0:
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"{name}.load_state_dict: state {k!r} of parameter {i} has shape "
                                         f"{tuple(v.shape)}, the parameter has {p.shape}")
                    v = xp.asarray(v, dtype=p.data.dtype)
                new_state[int(i)][k] = v
        for k in self._hyper:
            if k in groups[0]:
                v = groups[0][k]
                setattr(self, k, tuple(v) if isinstance(v, list) else v)
        if "param_weight_decay" in groups[0]:
            self._group_decay = list(groups[0]["param_weight_decay"])
        self.state = new_state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper) + ")"


class SGD(Optimizer):
    """g = grad + weight_decay * p;  with momentum: b = g (first step) else momentum * b + (1 - dampening) * g,
    g = g + momentum * b (nesterov) or b;  p -= lr * g."""
    _hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires momentum > 0 and dampening = 0")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)

    def _update(self, p, g, st, weight_decay):
        if weight_decay:
            g = g + weight_decay * p.data
        if self.momentum:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * g


class RMSprop(Optimizer):
    """g = grad + weight_decay * p;  v = alpha * v + (1 - alpha) * g^2;  centered: m = alpha * m + (1 - alpha) * g,
    denom = sqrt(v - m^2) + eps, else sqrt(v) + eps;  with momentum: b = momentum * b + g / denom, p -= lr * b;
    else p -= lr * g / denom."""
    _hyper = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                         centered=centered)

    def _update(self, p, g, st, weight_decay):
        xp = array_module(p.data)
        if weight_decay:
            g = g + weight_decay * p.data
        v = st.get("square_avg")
        if v is None:
            v = st["square_avg"] = xp.zeros_like(p.data)
        v *= self.alpha
        v += (1 - self.alpha) * g * g
        if self.centered:
            m = st.get("grad_avg")
            if m is None:
                m = st["grad_avg"] = xp.zeros_like(p.data)
            m *= self.alpha
            m += (1 - self.alpha) * g
            denom = xp.sqrt(v - m * m) + self.eps
        else:
            denom = xp.sqrt(v) + self.eps
        if self.momentum > 0:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = xp.zeros_like(p.data)
            buf *= self.momentum
            buf += g / denom
            p.data -= self.lr * buf
        else:
            p.data -= self.lr * (g / denom)


class Adam(Optimizer):
    """g = grad + weight_decay * p;  m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)   (= lr * m_hat / (sqrt(v_hat) + eps))."""
    _hyper = ("lr", "betas", "eps", "weight_decay")
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must lie in [0, 1), got {tuple(betas)}")
        super().__init__(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)

    def _update(self, p, g, st, weight_decay):
        xp = array_module(p.data)
        b1, b2 = self.betas
        if weight_decay:
            if self._decoupled:
                p.data *= 1 - self.lr * weight_decay
            else:
                g = g + weight_decay * p.data
        if "exp_avg" not in st:
            st["exp_avg"], st["exp_avg_sq"] = xp.zeros_like(p.data), xp.zeros_like(p.data)
        m, v, t = st["exp_avg"], st["exp_avg_sq"], st["step"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        step_size = self.lr / (1 - b1 ** t)
        denom = xp.sqrt(v) / ((1 - b2 ** t) ** 0.5) + self.eps
        p.data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr * weight_decay, then the Adam step on the raw gradient."""
    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
