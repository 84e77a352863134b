"""Layers with weights or hot ops: Conv2d, Linear, BatchNorm, pooling, Dropout, Flatten, Identity.

Each forward takes Tensors, checks the input's device (`backend.check`) and shape (errors name the layer
and the expected shape), and applies a node of `gpunet.autograd.functions`, which calls `backend.ops` or
`gpunet.functional` and keeps what its backward needs.
Weights are drawn on the host from the constructing backend's seeded generator (`gpunet.init`),
then cast to `dtype` and moved to `backend` (default: NumPy); biases start at zero.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet import init as initializers
from gpunet.autograd import functions as N
from gpunet.backend import get_backend
from gpunet.nn.module import Module, Parameter, _params
from gpunet.ops.geometry import check_input, pair, pool2d_geometry


def _host_rng(backend) -> np.random.Generator:
    return get_backend("numpy" if backend is None else backend).rng


class Conv2d(Module):
    """2-D convolution, weight (out, in, kh, kw), zero padding. activation="relu" uses the fused conv+ReLU op."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 activation: str | None = None, init="kaiming_normal", backend=None, dtype=np.float32):
        super().__init__()
        if activation not in (None, "relu"):
            raise ValueError(f"Conv2d: activation must be None or 'relu', got {activation!r}")
        kh, kw = pair(kernel_size, "Conv2d kernel_size")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = (kh, kw)
        self.stride = pair(stride, "Conv2d stride")
        self.padding = pair(padding, "Conv2d padding")
        self.activation = activation
        shape = (self.out_channels, self.in_channels, kh, kw)
        self.weight = Parameter(initializers.get(init)(shape, _host_rng(backend)))
        self.bias = Parameter(np.zeros(self.out_channels)) if bias else None
        self.to(backend, dtype)

    def forward(self, x):
        be = self._backend
        be.check(x.storage, "Conv2d input")
        check_input("Conv2d", x.shape, channels=self.in_channels)
        self._check_dtype(x, "Conv2d")
        node = N.Conv2d(be.ops, self.stride, self.padding, self.activation == "relu")
        return node(x, *_params(self.weight, self.bias))

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.bias is None:
            s += ", bias=False"
        return s + (f", activation={self.activation!r}" if self.activation else "")


class Linear(Module):
    """y = x @ weight.T + bias for x of shape (N, in_features); weight (out_features, in_features).
    As PyTorch's, it maps the last axis of any input (N, ..., in_features) -> (N, ..., out_features): on a
    sequence (N, T, F) it is the time-distributed dense layer, the same weights at every step."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init="kaiming_normal",
                 backend=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        shape = (self.out_features, self.in_features)
        self.weight = Parameter(initializers.get(init)(shape, _host_rng(backend)))
        self.bias = Parameter(np.zeros(self.out_features)) if bias else None
        self.to(backend, dtype)

    def forward(self, x):
        self._backend.check(x.storage, "Linear input")
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected input of shape (N, {self.in_features}), got {tuple(x.shape)} "
                             f"(leading axes may be added: (N, T, {self.in_features}) maps every step)")
        self._check_dtype(x, "Linear")
        if x.ndim == 2:
            return N.Linear()(x, *_params(self.weight, self.bias))
        lead = tuple(x.shape[:-1])
        y = N.Linear()(x.reshape(-1, self.in_features), *_params(self.weight, self.bias))
        return y.reshape(lead + (self.out_features,))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _BatchNorm(Module):
    """Per-channel batch normalisation (PyTorch semantics): training uses batch statistics (biased variance)
    and updates running = (1 - momentum) * running + momentum * batch (unbiased variance); eval uses the
    running statistics. momentum=None averages all batches seen (cumulative moving average).
    `comm` (a gpunet.distributed communicator of several ranks): training uses the statistics of the global
    batch over all ranks (synchronised batch norm, gpunet.distributed.sync_bn)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 backend=None, dtype=np.float32, comm=None):
        super().__init__()
        self.comm = comm
        self.num_features, self.eps, self.momentum, self.affine = int(num_features), float(eps), momentum, affine
        c = self.num_features
        self.weight = Parameter(np.ones(c)) if affine else None
        self.bias = Parameter(np.zeros(c)) if affine else None
        self.register_buffer("running_mean", np.zeros(c))
        self.register_buffer("running_var", np.ones(c))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        self.to(backend, dtype)

    def forward(self, x):
        be = self._backend
        name = type(self).__name__
        be.check(x.storage, f"{name} input")
        self._check(x)
        self._check_dtype(x, name)
        xp = be.xp
        c = self.num_features
        gamma = self.weight if self.affine else xp.ones(c, dtype=x.dtype)
        beta = self.bias if self.affine else xp.zeros(c, dtype=x.dtype)
        if not self.training:
            return N.BatchNormEval(be.ops, self.running_mean, self.running_var, self.eps)(x, gamma, beta)
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / int(self.num_batches_tracked)
        if self.comm is not None and self.comm.size > 1:
            from gpunet.distributed.sync_bn import SyncBatchNormTrain
            return SyncBatchNormTrain(self.comm, self.running_mean, self.running_var, momentum, self.eps)(x, gamma,
                                                                                                       beta)
        return N.BatchNormTrain(be.ops, self.running_mean, self.running_var, momentum, self.eps)(x, gamma, beta)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) inputs."""

    def _check(self, x):
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm1d: expected input of shape (N, {self.num_features}), got {tuple(x.shape)}")


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs, statistics per channel."""

    def _check(self, x):
        check_input("BatchNorm2d", x.shape, channels=self.num_features)


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name} kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, f"{name} stride")
        self.padding = pair(padding, f"{name} padding")

    def _window(self, x):
        self._backend.check(x.storage, f"{type(self).__name__} input")
        return pool2d_geometry(type(self).__name__, x.shape, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over each window; padding is -inf, ties go to the first maximum, NaN propagates."""

    def forward(self, x):
        self._window(x)
        return N.MaxPool2d(self._backend.ops, self.kernel_size, self.stride, self.padding)(x)


class AvgPool2d(_Pool2d):
    """Mean over each window; zero padding counts in the divisor (PyTorch's count_include_pad=True)."""

    def forward(self, x):
        self._window(x)
        return N.AvgPool2d(self._backend.ops, self.kernel_size, self.stride, self.padding)(x)


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): the mean over all spatial positions (ready for a Linear layer)."""

    def forward(self, x):
        self._backend.check(x.storage, "GlobalAvgPool2d input")
        check_input("GlobalAvgPool2d", x.shape)
        return N.GlobalAvgPool2d()(x)


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        self._backend.check(x.storage, "Flatten input")
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected input of shape (N, ...) with at least 2 dims, got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)


class Identity(Module):
    def forward(self, x):
        self._backend.check(x.storage, "Identity input")
        return x


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by 1/(1-p);
    identity in eval mode.

    Masks come from `backend.ops.dropout_mask(shape, p, seed, counter, dtype)`: `seed` is drawn once, at
    construction, from the constructing backend's generator, and `counter` advances by ceil(numel / 4)
    per forward (Philox4x64 yields four 64-bit words per counter step), so successive masks never
    overlap and the same seed gives the same masks on every device. Set `seed`/`counter` to replay.

    `shard_rows = (lo, m)` (set by a data-parallel Trainer each step): the input holds rows [lo, lo + n) of
    a global batch of m rows; the mask is those rows of the global batch's mask (exactly, when lo times the
    elements per row is a multiple of 4) and the counter advances as for the global batch.
    """

    def __init__(self, p: float = 0.5, backend=None):
        super().__init__()
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p
        self.seed = int(_host_rng(backend).integers(0, 2**63))
        self.counter = 0
        self.shard_rows = None
        self.to(backend)

    def forward(self, x):
        be = self._backend
        be.check(x.storage, "Dropout input")
        if not self.training or self.p == 0.0:
            return x
        counter, advance = self.counter, math.ceil(x.size / 4)
        if self.shard_rows is not None and x.shape[0]:
            lo, m = self.shard_rows
            per_row = x.size // x.shape[0]
            counter, advance = counter + lo * per_row // 4, math.ceil(m * per_row / 4)
        y = N.Dropout(self.p, self.seed, counter, be)(x)
        self.counter += advance
        return y

    def extra_repr(self) -> str:
        return f"p={self.p}"
