"""CudaOps: the Ops contract (gpunet.ops.interface) on our CUDA kernels, the engine of the 'cupy'
backend and of its CPU 'emulator'.

This module is the facade: each op is validated here once (gpunet.ops.checks: dtypes, shapes, and
arrays on this engine's device) and handed, C-contiguous, to a launcher that trusts it: conv2d
(cuda_kernels/conv2d_relu.cu), pool (maxpool2d.cu, avgpool2d.cu), batchnorm (batchnorm.cu) and dropout
(dropout.cu). Launchers only refuse what the kernels cannot index (32-bit limits, grid sizes). The
launch code is the same on both kinds; only the module class differs (gpunet.cuda.loader.KernelContext).
NumpyOps is the engine they are tested against.
"""
from __future__ import annotations

from gpunet.cuda import batchnorm as _bn
from gpunet.cuda import conv2d as _conv
from gpunet.cuda import dropout as _dropout
from gpunet.cuda import pool as _pool
from gpunet.cuda.loader import KernelContext
from gpunet.ops import checks


class CudaOps:
    """Ops on CUDA kernels; kind 'cupy' (a GPU) or 'emulator' (the CPU emulator of the same source)."""

    def __init__(self, kind: str = "emulator"):
        self.ctx = KernelContext(kind)
        self.kind = kind
        self.xp = self.ctx.xp

    def __repr__(self):
        return f"CudaOps({self.kind!r})"

    def _on_device(self, op: str, **arrays):
        checks.same_device(op, self.kind, self.kind == "cupy", **arrays)

    # ------------------------------------------------------------------ convolution
    def conv2d_forward(self, x, w, b, stride, padding, relu: bool, keep_layout: bool = False):
        """keep_layout is accepted and ignored: CuPy activations are always NCHW."""
        self._on_device("conv2d", input=x, weight=w, bias=b)
        win = checks.conv2d(x, w, b, stride, padding)
        return _conv.conv2d_forward(self.ctx, x, w, b, win, bool(relu))

    def conv2d_backward(self, dy, ctx, input_grad: bool = True):
        if not isinstance(ctx, _conv.Conv2dCache):
            raise TypeError(f"conv2d backward: ctx must come from this backend's conv2d_forward, "
                            f"got {type(ctx).__name__}")
        self._on_device("conv2d backward", input=ctx.x, dy=dy)
        checks.conv2d_backward(dy, ctx.x, ctx.w, ctx.win)
        return _conv.conv2d_backward(self.ctx, dy, ctx, bool(input_grad))

    # ------------------------------------------------------------------ pooling
    def max_pool2d_forward(self, x, kernel, stride, padding):
        self._on_device("max_pool2d", input=x)
        return _pool.max_pool2d_forward(self.ctx, x, checks.pool2d("max_pool2d", x, kernel, stride, padding))

    def max_pool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        self._on_device("max_pool2d backward", dy=dy, argmax=argmax)
        win = checks.max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding)
        return _pool.max_pool2d_backward(self.ctx, dy, argmax, win)

    def avg_pool2d_forward(self, x, kernel, stride, padding):
        self._on_device("avg_pool2d", input=x)
        return _pool.avg_pool2d_forward(self.ctx, x, checks.pool2d("avg_pool2d", x, kernel, stride, padding))

    def avg_pool2d_backward(self, dy, x_shape, kernel, stride, padding):
        self._on_device("avg_pool2d backward", dy=dy)
        win = checks.pool2d_backward("avg_pool2d", dy, x_shape, kernel, stride, padding)
        return _pool.avg_pool2d_backward(self.ctx, dy, win)

    # ------------------------------------------------------------------ batch norm
    def batch_norm_train(self, x, gamma, beta, running_mean, running_var, momentum, eps):
        vectors = dict(gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
        self._on_device("batch_norm", input=x, **vectors)
        shape = checks.batch_norm("batch_norm", x, True, **vectors)
        return _bn.batch_norm_train(self.ctx, shape, x, gamma, beta, running_mean, running_var, float(momentum),
                                    float(eps))

    def batch_norm_eval(self, x, gamma, beta, running_mean, running_var, eps):
        vectors = dict(gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
        self._on_device("batch_norm", input=x, **vectors)
        shape = checks.batch_norm("batch_norm", x, **vectors)
        return _bn.batch_norm_eval(self.ctx, shape, x, gamma, beta, running_mean, running_var, float(eps))

    def batch_norm_backward(self, dy, x, gamma, mean, invstd):
        self._on_device("batch_norm backward", input=x, dy=dy, gamma=gamma, mean=mean, invstd=invstd)
        shape = checks.batch_norm("batch_norm backward", x, dy=dy, gamma=gamma, mean=mean, invstd=invstd)
        return _bn.batch_norm_backward(self.ctx, shape, dy, x, gamma, mean, invstd)

    # ------------------------------------------------------------------ dropout
    def dropout_mask(self, shape, p: float, seed: int, counter: int, dtype):
        shape, p, seed, counter, dt = checks.dropout(shape, p, seed, counter, dtype)
        return _dropout.dropout_mask(self.ctx, shape, p, seed, counter, dt)
