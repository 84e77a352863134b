"""Numerical gradient checks: central differences in float64 against autograd's gradients.

    report = gradcheck(model, x)                       # dx and every parameter gradient
    report = gradcheck(nn.SoftmaxCrossEntropy(), (logits, labels))
    report = gradcheck(lambda a, b: (a @ b).tanh(), (a, b))   # any function of tensors: every float input
    report = gradcheck((fwd, bwd), (a, b))             # plain array functions: bwd(dy) -> (da, db)

The scalar checked is L = sum(R * y) for a fixed random R shaped like the output y, so every output
element contributes; the analytic gradient is what `y.backward(R)` leaves in the inputs' and the
parameters' `.grad` (or `bwd(R)` for a pair). Floating inputs are copied to float64; a module (or loss)
is deep-copied and cast to float64, so the caller's object is never touched. The module's mode is kept
(BatchNorm in training mode uses batch statistics). Dropout counters are rewound before every forward
so the mask stays fixed.

An element passes when |analytic - numeric| <= atol + rtol * |numeric|. The report lists, per tensor,
the largest absolute and relative error (|a - n| / max(|a|, |n|, atol)) and the worst element; with
raise_exception=True a failure raises GradcheckError naming that element. Inputs must keep away from
kinks (ReLU at 0, max-pool ties) by more than eps.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from gpunet.functional import array_module


class GradcheckError(AssertionError):
    def __init__(self, report: "GradcheckReport"):
        super().__init__(str(report))
        self.report = report


@dataclass
class TensorCheck:
    name: str
    shape: tuple
    checked: int
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple
    analytic: float
    numeric: float
    ok: bool

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        return (f"{status} {self.name}{list(self.worst_index)} of {self.shape}: analytic {self.analytic:.6g} vs "
                f"numeric {self.numeric:.6g} (abs err {self.max_abs_err:.2e}, rel err {self.max_rel_err:.2e}, "
                f"{self.checked} elements checked)")


@dataclass
class GradcheckReport:
    target: str
    checks: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def worst(self) -> TensorCheck | None:
        return max(self.checks, key=lambda c: (not c.ok, c.max_rel_err), default=None)

    def __str__(self) -> str:
        head = f"gradcheck {self.target}: {'passed' if self.ok else 'FAILED'}"
        return "\n".join([head] + ["  " + c.line() for c in self.checks])


def _to64(a):
    if hasattr(a, "dtype") and a.dtype.kind == "f":
        return array_module(a).array(a, dtype=np.float64)
    return a


def _dropout_layers(target):
    from gpunet.nn.layers import Dropout
    if hasattr(target, "modules"):
        return [m for m in target.modules() if isinstance(m, Dropout)]
    return []


def _prepare(target, n_inputs):
    """(forward(*arrays) -> y array, backward(R) -> input grads, named params, description, modules).
    Floating inputs listed in the returned index list are differentiated."""
    from gpunet.autograd import Tensor, backward, no_grad
    from gpunet.nn.module import Module
    if isinstance(target, tuple) and len(target) == 2 and all(callable(f) for f in target):
        fwd, bwd = target

        def backward_pair(arrays, r):
            g = bwd(r)
            return g if isinstance(g, tuple) else (g,)
        return (lambda arrays: fwd(*arrays)), backward_pair, [], getattr(fwd, "__name__", "function"), None, False
    if isinstance(target, Module):
        memo = {}  # share the devices, copy the weights, drop stale array-API records
        for m in target.modules():
            memo[id(m.backend)] = m.backend
            memo[id(m._cache)] = None
        target = copy.deepcopy(target, memo).double()
        params = [(n, p) for n, p in target.named_parameters() if p.requires_grad]
        first_only, desc = True, type(target).__name__
    elif callable(target):
        params, first_only, desc = [], False, getattr(target, "__name__", type(target).__name__)
    else:
        raise TypeError("gradcheck: target must be a Module, a loss, a function of tensors, or a "
                        "(forward_fn, backward_fn) pair")
    grad_args = {}

    def forward(arrays):
        with no_grad():
            return target(*[Tensor(a) if hasattr(a, "dtype") else a for a in arrays]).data

    def backward_graph(arrays, r):
        floats = [i for i, a in enumerate(arrays) if hasattr(a, "dtype") and a.dtype.kind == "f"]
        wanted = set(floats[:1] if first_only else floats)
        ts = [Tensor(a, requires_grad=i in wanted) if hasattr(a, "dtype") else a for i, a in enumerate(arrays)]
        y = target(*ts)
        if not y.requires_grad:
            raise AssertionError(f"gradcheck {desc}: the output does not depend on anything that requires grad")
        backward([y], [r])
        grad_args["y"] = y
        return tuple(ts[i].grad for i in sorted(wanted))
    return forward, backward_graph, params, desc, target, first_only


def gradcheck(target, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              max_checks: int | None = None, seed: int = 0, raise_exception: bool = True) -> GradcheckReport:
    """Compare analytic and central-difference gradients; see the module docstring.

    inputs: one array or a tuple (e.g. (logits, labels)). For modules and losses the gradient of the
    first input is checked; for a function of tensors or a (forward, backward) pair, of every floating
    input in order.
    max_checks: check at most this many randomly chosen elements per tensor (None: all).
    """
    inputs = tuple(_to64(a) for a in (inputs if isinstance(inputs, tuple) else (inputs,)))
    fwd, bwd, params, desc, module, first_only = _prepare(target, len(inputs))
    dropouts = _dropout_layers(module)
    counters = [d.counter for d in dropouts]

    def run():
        for d, c in zip(dropouts, counters):
            d.counter = c
        return fwd(inputs)

    for _, p in params:
        p.grad = None
    y = run()
    xp = array_module(y)
    rng = np.random.default_rng(seed)
    r = xp.asarray(rng.standard_normal(np.shape(y)), dtype=y.dtype)
    for d, c in zip(dropouts, counters):
        d.counter = c
    input_grads = bwd(inputs, r)

    float_inputs = [i for i, a in enumerate(inputs) if hasattr(a, "dtype") and a.dtype.kind == "f"]
    if first_only:  # modules and losses differentiate their first input only
        float_inputs = float_inputs[:1]
    tensors = [(f"input{i}" if len(inputs) > 1 else "input", inputs[i], g)
               for i, g in zip(float_inputs, input_grads)]
    tensors += [(n, p.data, p.grad) for n, p in params]

    def scalar():
        return float((r * run()).sum())

    report = GradcheckReport(desc)
    for name, arr, grad in tensors:
        if grad is None:
            raise AssertionError(f"gradcheck {desc}: backward produced no gradient for {name}")
        analytic = np.asarray(grad.get() if hasattr(grad, "get") else grad, dtype=np.float64)
        if analytic.shape != tuple(arr.shape):
            raise AssertionError(f"gradcheck {desc}: gradient of {name} has shape {analytic.shape}, "
                                 f"expected {tuple(arr.shape)}")
        if not arr.flags.c_contiguous:
            raise AssertionError(f"gradcheck {desc}: {name} is not C-contiguous, cannot perturb it in place")
        flat = arr.reshape(-1)  # a view: perturbing it perturbs arr
        idx = np.arange(arr.size)
        if max_checks is not None and arr.size > max_checks:
            idx = np.sort(rng.choice(arr.size, size=max_checks, replace=False))
        numeric = np.empty(len(idx))
        for j, k in enumerate(idx):
            orig = float(flat[k])
            flat[k] = orig + eps
            plus = scalar()
            flat[k] = orig - eps
            minus = scalar()
            flat[k] = orig
            numeric[j] = (plus - minus) / (2 * eps)
        a = analytic.reshape(-1)[idx]
        diff = np.abs(a - numeric)
        rel = diff / np.maximum(np.maximum(np.abs(a), np.abs(numeric)), atol)
        excess = diff / (atol + rtol * np.abs(numeric))
        w = int(np.argmax(excess)) if len(idx) else 0
        report.checks.append(TensorCheck(
            name=name, shape=tuple(arr.shape), checked=len(idx),
            max_abs_err=float(diff.max(initial=0.0)), max_rel_err=float(rel.max(initial=0.0)),
            worst_index=tuple(int(i) for i in np.unravel_index(int(idx[w]), arr.shape)) if len(idx) else (),
            analytic=float(a[w]) if len(idx) else 0.0, numeric=float(numeric[w]) if len(idx) else 0.0,
            ok=bool((excess <= 1.0).all())))
    if raise_exception and not report.ok:
        raise GradcheckError(report)
    return report
