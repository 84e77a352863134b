"""Local response normalisation (AlexNet, 2012): each activation divided by the energy of its neighbours
across channels,

    b_c = a_c / (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} a_c'^2) ** beta

(channels outside [0, C) count as zero), PyTorch's `nn.LocalResponseNorm` formula and defaults. BatchNorm
replaced it; it is here because the classic AlexNet uses it. Built from tensor operations, so its
gradient comes from the autograd and it runs on every backend.
"""
from __future__ import annotations

import math

from gpunet.autograd import Tensor, concatenate
from gpunet.nn.module import Module


class LocalResponseNorm(Module):
    """Divide by (k + alpha/size * sum of squares over `size` neighbouring channels) ** beta; (N, C, ...) in/out."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        if isinstance(size, bool) or int(size) != size or size < 1:
            raise ValueError(f"LocalResponseNorm: size must be a positive integer, got {size!r}")
        for name, v in (("alpha", alpha), ("beta", beta), ("k", k)):
            if not math.isfinite(v):
                raise ValueError(f"LocalResponseNorm: {name} must be finite, got {v!r}")
        if k <= 0:
            raise ValueError(f"LocalResponseNorm: k must be > 0 (it keeps the divisor away from 0), got {k!r}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x):
        self._backend.check(x.storage, "LocalResponseNorm input")
        if x.ndim < 3:
            raise ValueError(f"LocalResponseNorm: expected input of shape (N, C, ...), got {tuple(x.shape)}")
        xp, c = self._backend.xp, x.shape[1]
        parts = [x * x]
        for at, width in ((0, self.size // 2), (2, (self.size - 1) // 2)):
            if width:
                zeros = Tensor(xp.zeros((x.shape[0], width) + tuple(x.shape[2:]), x.dtype), backend=self._backend)
                parts.insert(at if at == 0 else len(parts), zeros)
        padded = concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        total = padded[:, 0:c]
        for i in range(1, self.size):
            total = total + padded[:, i:i + c]
        return x / (total * (self.alpha / self.size) + self.k) ** self.beta

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha:g}, beta={self.beta:g}, k={self.k:g}"
