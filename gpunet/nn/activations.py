"""Element-wise activation layers: each forward applies one node (gpunet.autograd), which keeps only what its
backward reads (the output for ReLU/Sigmoid/Tanh, the input for LeakyReLU/PReLU, both for ELU)."""
from __future__ import annotations

import numpy as np

from gpunet.autograd import functions as N
from gpunet.nn.module import Module, Parameter


class ReLU(Module):
    def forward(self, x):
        self._backend.check(x.storage, "ReLU input")
        return x.relu()


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        self._backend.check(x.storage, "LeakyReLU input")
        return N.LeakyReLU(self.negative_slope)(x)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class PReLU(Module):
    """Leaky ReLU with a learned slope `weight`: one shared (num_parameters=1) or one per channel (axis 1)."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, backend=None, dtype=np.float32):
        super().__init__()
        self.num_parameters = int(num_parameters)
        self.weight = Parameter(np.full(self.num_parameters, float(init)))
        self.to(backend, dtype)

    def forward(self, x):
        self._backend.check(x.storage, "PReLU input")
        if self.num_parameters > 1 and (x.ndim < 2 or x.shape[1] != self.num_parameters):
            raise ValueError(f"PReLU: expected input of shape (N, {self.num_parameters}, ...), got {tuple(x.shape)}")
        self._check_dtype(x, "PReLU")
        return N.PReLU()(x, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


class ELU(Module):
    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x):
        self._backend.check(x.storage, "ELU input")
        return N.ELU(self.alpha)(x)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Sigmoid(Module):
    def forward(self, x):
        self._backend.check(x.storage, "Sigmoid input")
        return x.sigmoid()


class Tanh(Module):
    def forward(self, x):
        self._backend.check(x.storage, "Tanh input")
        return x.tanh()
