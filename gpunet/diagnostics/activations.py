"""Per-layer activation statistics: run a batch through a model and summarise what every layer outputs.

    for s in activation_stats(model, x):
        print(s.name, s.kind, s.mean, s.std, s.dead_fraction)     # s.hist_counts / s.hist_edges too

Outputs are captured by `record_outputs(model)`, a context manager that temporarily shadows the `forward`
of the selected modules on the instance (no change to the Module class, no hooks needed). Statistics are
computed on the host in float64 (one device->host copy per recorded layer).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from gpunet.nn import ELU, Conv2d, LeakyReLU, PReLU, ReLU, Residual, Sigmoid, Tanh

ACTIVATIONS = (ReLU, LeakyReLU, PReLU, ELU, Sigmoid, Tanh)


def is_activation(module) -> bool:
    """Modules whose output is an activation: nonlinearity layers, and convs/residuals with a fused ReLU."""
    return isinstance(module, ACTIVATIONS) or (isinstance(module, (Conv2d, Residual))
                                               and module.activation == "relu")


def is_relu_output(module) -> bool:
    return isinstance(module, ReLU) or (isinstance(module, (Conv2d, Residual)) and module.activation == "relu")


def is_leaf(module) -> bool:
    return not module._modules


def unit_axis(ndim: int) -> int:
    """The axis holding units: features/channels (axis 1) for (N, C) and (N, C, H, W), hidden units (the last)
    for (N, T, H) sequences."""
    return 2 if ndim == 3 else 1


@dataclass
class LayerStats:
    name: str                 # module path in the model ("" for the model itself)
    kind: str                 # class name
    shape: tuple
    mean: float
    std: float
    min: float
    max: float
    frac_zero: float          # share of outputs that are exactly 0
    dead_fraction: float      # share of units (see unit_axis) that are 0 for every sample of the batch
    hist_counts: list = field(default_factory=list)
    hist_edges: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def tensor_stats(name: str, kind: str, y, bins: int = 50, hist_range=None) -> LayerStats:
    """Statistics of one output array (any device). `hist_range` (lo, hi) fixes the histogram's range;
    None uses the data's own min and max."""
    a = np.asarray(y.get() if hasattr(y, "get") else y, dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"activation stats: {name or kind} produced an empty output {a.shape}")
    counts, edges = np.histogram(a, bins=bins, range=hist_range)
    zero = a == 0
    dead = 0.0
    if a.ndim >= 2:
        ax = unit_axis(a.ndim)
        dead = float(zero.all(axis=tuple(i for i in range(a.ndim) if i != ax)).mean())
    return LayerStats(name, kind, tuple(a.shape), float(a.mean()), float(a.std()), float(a.min()), float(a.max()),
                      float(zero.mean()), dead, counts.tolist(), edges.tolist())


@contextmanager
def record_outputs(model, select=is_leaf):
    """Within the block, every forward of a module m with select(m) appends (name, m, output) to the yielded list."""
    records, patched = [], []
    for name, m in model.named_modules():
        if not select(m):
            continue
        previous = m.__dict__.get("forward")
        inner = m.forward

        def forward(*args, _inner=inner, _name=name, _m=m, **kwargs):
            y = _inner(*args, **kwargs)
            records.append((_name, _m, getattr(y, "data", y)))  # the array of a Tensor output
            return y
        m.__dict__["forward"] = forward  # an instance attribute shadows the class's method
        patched.append((m, previous))
    try:
        yield records
    finally:
        for m, previous in patched:
            if previous is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = previous


def activation_stats(model, x, select=is_leaf, bins: int = 50, hist_range=None, train: bool = False) -> list:
    """One forward of batch `x` (eval mode unless train=True; the model's mode is restored) and a LayerStats
    per selected module (default: every leaf module) in call order. `select=is_activation` keeps just the
    nonlinearities. A training-mode forward updates batch-norm running statistics, as training would."""
    was_training = model.training
    model.train(train)
    try:
        with record_outputs(model, select) as records:
            model(x)
    finally:
        model.train(was_training)
    return [tensor_stats(name, type(m).__name__, y, bins, hist_range) for name, m, y in records]
