"""The Ops protocol on our CUDA kernels, for the 'cupy' backend and its CPU 'emulator'.

Each op validates its arguments (shapes through gpunet.ops.geometry, float32/float64 only, parameters
in the input's dtype, arrays on this backend's device) and hands C-contiguous arrays to a launcher in
gpunet.cuda: conv2d (cuda_kernels/conv2d_relu.cu), pool (maxpool2d.cu, avgpool2d.cu), batchnorm
(batchnorm.cu) and dropout (dropout.cu). The launch code is the same on both backends; only the
module class differs (gpunet.cuda.loader.KernelContext). Semantics are those documented in
gpunet.ops.interface, and NumpyOps is the reference they are tested against.
"""
from __future__ import annotations

import numpy as np

from gpunet.cuda import batchnorm as _bn
from gpunet.cuda import conv2d as _conv
from gpunet.cuda import dropout as _dropout
from gpunet.cuda import pool as _pool
from gpunet.cuda.loader import KernelContext
# The dtype rules and their error messages are NumpyOps' own (device-agnostic helpers), so both
# backends reject the same arguments with the same words.
from gpunet.ops._numpy_util import FLOATS, float_array, same_dtype
from gpunet.ops.geometry import batch_norm_geometry, conv2d_geometry, dropout_args, pool2d_geometry


class CudaOps:
    """Ops on CUDA kernels (CuPy on a GPU, or the CPU emulator of the same source)."""

    def __init__(self, backend):
        self.backend = backend
        self.xp = backend.xp
        self.ctx = KernelContext(backend)

    def __repr__(self):
        return f"CudaOps({self.backend.name!r})"

    # ------------------------------------------------------------------ validation
    def _on_device(self, op: str, **arrays):
        """Refuse arrays of the other device (no silent host <-> device copies)."""
        for name, a in arrays.items():
            if a is not None and hasattr(a, "dtype"):
                self.backend.check(a, f"{op} {name}")

    def _array(self, a, op: str, what: str):
        """`a` on this device with a float32/float64 dtype."""
        float_array(op, what, a)
        self._on_device(op, **{what: a})
        return a

    def _same_dtype(self, op: str, x, **others):
        """x and every other array (None skipped) on this device, float32/float64, one dtype."""
        self._on_device(op, input=x, **others)
        same_dtype(op, x, **others)

    # ------------------------------------------------------------------ convolution
    def conv2d_forward(self, x, w, b, stride, padding, relu: bool):
        self._same_dtype("conv2d", x, weight=w, bias=b)
        conv2d_geometry(x.shape, w.shape, stride, padding)
        return _conv.conv2d_forward(self.ctx, x, w, b, stride, padding, bool(relu))

    def conv2d_backward(self, dy, ctx, input_grad: bool = True):
        if not isinstance(ctx, _conv.Conv2dCache):
            raise TypeError(f"conv2d backward: ctx must come from this backend's conv2d_forward, "
                            f"got {type(ctx).__name__}")
        self._same_dtype("conv2d backward", ctx.x, dy=dy)
        return _conv.conv2d_backward(self.ctx, dy, ctx, bool(input_grad))

    # ------------------------------------------------------------------ pooling
    def max_pool2d_forward(self, x, kernel, stride, padding):
        self._array(x, "max_pool2d", "input")
        pool2d_geometry("max_pool2d", x.shape, kernel, stride, padding)
        return _pool.max_pool2d_forward(self.ctx, x, kernel, stride, padding)

    def max_pool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        self._array(dy, "max_pool2d backward", "dy")
        self.backend.check(argmax, "max_pool2d backward argmax")
        return _pool.max_pool2d_backward(self.ctx, dy, argmax, tuple(x_shape), kernel, stride, padding)

    def avg_pool2d_forward(self, x, kernel, stride, padding):
        self._array(x, "avg_pool2d", "input")
        pool2d_geometry("avg_pool2d", x.shape, kernel, stride, padding)
        return _pool.avg_pool2d_forward(self.ctx, x, kernel, stride, padding)

    def avg_pool2d_backward(self, dy, x_shape, kernel, stride, padding):
        self._array(dy, "avg_pool2d backward", "dy")
        return _pool.avg_pool2d_backward(self.ctx, dy, tuple(x_shape), kernel, stride, padding)

    # ------------------------------------------------------------------ batch norm
    def batch_norm_train(self, x, gamma, beta, running_mean, running_var, momentum, eps):
        self._same_dtype("batch_norm", x, gamma=gamma, beta=beta, running_mean=running_mean,
                         running_var=running_var)
        batch_norm_geometry("batch_norm", x.shape, training=True, gamma=gamma.shape, beta=beta.shape,
                            running_mean=running_mean.shape, running_var=running_var.shape)
        return _bn.batch_norm_train(self.ctx, x, gamma, beta, running_mean, running_var, float(momentum),
                                    float(eps))

    def batch_norm_eval(self, x, gamma, beta, running_mean, running_var, eps):
        self._same_dtype("batch_norm", x, gamma=gamma, beta=beta, running_mean=running_mean,
                         running_var=running_var)
        batch_norm_geometry("batch_norm", x.shape, gamma=gamma.shape, beta=beta.shape,
                            running_mean=running_mean.shape, running_var=running_var.shape)
        return _bn.batch_norm_eval(self.ctx, x, gamma, beta, running_mean, running_var, float(eps))

    def batch_norm_backward(self, dy, x, gamma, mean, invstd):
        self._same_dtype("batch_norm backward", x, dy=dy, gamma=gamma, mean=mean, invstd=invstd)
        batch_norm_geometry("batch_norm backward", x.shape, gamma=gamma.shape, mean=mean.shape,
                            invstd=invstd.shape)
        return _bn.batch_norm_backward(self.ctx, dy, x, gamma, mean, invstd)

    # ------------------------------------------------------------------ dropout
    def dropout_mask(self, shape, p: float, seed: int, counter: int, dtype):
        if np.dtype(dtype) not in FLOATS:
            raise TypeError(f"dropout_mask: expected dtype float32 or float64, got {np.dtype(dtype)}")
        dropout_args(shape, p, seed, counter)
        return _dropout.dropout_mask(self.ctx, shape, p, seed, counter, dtype)
