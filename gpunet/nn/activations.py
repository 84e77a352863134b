"""Element-wise activation layers over `gpunet.functional`. Each caches, in training mode, only what its
backward reads (the output for ReLU/Sigmoid/Tanh, the input for LeakyReLU/PReLU, both for ELU)."""
from __future__ import annotations

import numpy as np

from gpunet import functional as F
from gpunet.nn.module import Module, Parameter


class ReLU(Module):
    def forward(self, x):
        self._backend.check(x, "ReLU input")
        y = F.relu(x)
        self._save(y)
        return y

    def backward(self, dy):
        (y,) = self._take(dy)
        return F.relu_backward(dy, y)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        self._backend.check(x, "LeakyReLU input")
        self._save(x)
        return F.leaky_relu(x, self.negative_slope)

    def backward(self, dy):
        (x,) = self._take(dy)
        return F.leaky_relu_backward(dy, x, self.negative_slope)

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
        self._backend.check(x, "PReLU input")
        if self.num_parameters > 1 and (x.ndim < 2 or x.shape[1] != self.num_parameters):
            raise ValueError(f"PReLU: expected input of shape (N, {self.num_parameters}, ...), got {tuple(x.shape)}")
        self._check_dtype(x, "PReLU")
        self._save(x)
        return F.prelu(x, self.weight.data)

    def backward(self, dy):
        (x,) = self._take(dy)
        dx, dw = F.prelu_backward(dy, x, self.weight.data)
        self._accumulate(self.weight, dw)
        return dx

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


class ELU(Module):
    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x):
        self._backend.check(x, "ELU input")
        y = F.elu(x, self.alpha)
        self._save(x, y)
        return y

    def backward(self, dy):
        x, y = self._take(dy)
        return F.elu_backward(dy, x, y, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Sigmoid(Module):
    def forward(self, x):
        self._backend.check(x, "Sigmoid input")
        y = F.sigmoid(x)
        self._save(y)
        return y

    def backward(self, dy):
        (y,) = self._take(dy)
        return F.sigmoid_backward(dy, y)


class Tanh(Module):
    def forward(self, x):
        self._backend.check(x, "Tanh input")
        y = F.tanh(x)
        self._save(y)
        return y

    def backward(self, dy):
        (y,) = self._take(dy)
        return F.tanh_backward(dy, y)
