"""OnednnOps: NumpyOps with every call oneDNN can serve sent to gpunet.onednn (a test vehicle).

Float32 NumPy calls go to oneDNN's conv, pool and batch-norm modules; float64 and the rest (dropout)
stay on NumpyOps. A conv ctx remembers which engine made it, so each backward goes to its forward's
engine. This class routes *everything* oneDNN can do, whatever the speed: choosing per op and
geometry (see docs/onednn.md's numbers) is the job of the NumPy ops' algorithm table once it is wired.
"""
from __future__ import annotations

import numpy as np

from gpunet.onednn import batchnorm, conv, pool
from gpunet.ops.numpy import NumpyOps


def _f32(*arrays) -> bool:
    return all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays if a is not None)


class OnednnOps(NumpyOps):
    def __repr__(self) -> str:
        return "OnednnOps()"

    def conv2d_forward(self, x, w, b, stride, padding, relu: bool):
        if conv.applies(x, w) and _f32(b):
            return conv.conv2d_forward(x, w, b, stride, padding, relu)
        return super().conv2d_forward(x, w, b, stride, padding, relu)

    def conv2d_backward(self, dy, ctx, input_grad: bool = True):
        if isinstance(ctx, conv.ConvCtx):
            return conv.conv2d_backward(dy, ctx, input_grad)
        return super().conv2d_backward(dy, ctx, input_grad)

    def max_pool2d_forward(self, x, kernel, stride, padding):
        if pool.applies(x):
            return pool.max_pool2d_forward(x, kernel, stride, padding)
        return super().max_pool2d_forward(x, kernel, stride, padding)

    def max_pool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        if _f32(dy):
            return pool.max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding)
        return super().max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding)

    def avg_pool2d_forward(self, x, kernel, stride, padding):
        if pool.applies(x):
            return pool.avg_pool2d_forward(x, kernel, stride, padding)
        return super().avg_pool2d_forward(x, kernel, stride, padding)

    def avg_pool2d_backward(self, dy, x_shape, kernel, stride, padding):
        if _f32(dy):
            return pool.avg_pool2d_backward(dy, x_shape, kernel, stride, padding)
        return super().avg_pool2d_backward(dy, x_shape, kernel, stride, padding)

    def batch_norm_train(self, x, gamma, beta, running_mean, running_var, momentum, eps):
        if _f32(x, gamma, beta, running_mean, running_var):
            return batchnorm.batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps)
        return super().batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps)

    def batch_norm_eval(self, x, gamma, beta, running_mean, running_var, eps):
        if _f32(x, gamma, beta, running_mean, running_var):
            return batchnorm.batch_norm_eval(x, gamma, beta, running_mean, running_var, eps)
        return super().batch_norm_eval(x, gamma, beta, running_mean, running_var, eps)

    def batch_norm_backward(self, dy, x, gamma, mean, invstd):
        if _f32(dy, x, gamma, mean, invstd):
            return batchnorm.batch_norm_backward(dy, x, gamma, mean, invstd)
        return super().batch_norm_backward(dy, x, gamma, mean, invstd)
