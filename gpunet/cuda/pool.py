"""Launchers for cuda_kernels/maxpool2d.cu and cuda_kernels/avgpool2d.cu.

    y, argmax = max_pool2d_forward(ctx, x, kernel, stride, padding)
    dx = max_pool2d_backward(ctx, dy, argmax, x_shape, kernel, stride, padding)
    y = avg_pool2d_forward(ctx, x, kernel, stride, padding)
    dx = avg_pool2d_backward(ctx, dy, x_shape, kernel, stride, padding)

`ctx` is a `gpunet.cuda.loader.KernelContext`. Geometry comes from
`gpunet.ops.geometry.pool2d_geometry` (the kernels re-check it); inputs are made C-contiguous here.
Tie, NaN and index rules are stated at the top of the kernel files.
"""
from __future__ import annotations

import numpy as np

from gpunet.cuda.loader import INT32_MAX, dtype_suffix, grid_1d, i32
from gpunet.ops.geometry import Window2d, pool2d_geometry

MAXPOOL = "maxpool2d.cu"
AVGPOOL = "avgpool2d.cu"


def _geometry(op, x_shape, kernel, stride, padding) -> Window2d:
    """The window, checked against the kernels' 32-bit indexing (docs/kernel_limits.md): tensors and
    the padded extents H + 2*padding, W + 2*padding (window ends) below 2^31. The kernels re-check
    the same and write nothing otherwise, so refusing here is what keeps an output from being garbage."""
    g = pool2d_geometry(op, x_shape, kernel, stride, padding)
    for what, size in (("input", g.n * g.c * g.h * g.w), ("output", g.n * g.c * g.oh * g.ow)):
        if size > INT32_MAX:
            raise ValueError(f"{op}: an {what} of {size} elements exceeds the kernels' 32-bit indexing "
                             f"(at most {INT32_MAX})")
    if max(g.sh, g.sw) > INT32_MAX:
        raise ValueError(f"{op}: stride {(g.sh, g.sw)} exceeds the kernels' 32-bit arguments (at most {INT32_MAX})")
    for axis, size, pad in (("height", g.h, g.ph), ("width", g.w, g.pw)):
        if size + 2 * pad > INT32_MAX:
            raise ValueError(f"{op}: padded {axis} {size} + 2*{pad} = {size + 2 * pad} exceeds the kernels' "
                             f"32-bit indexing (at most {INT32_MAX})")
    return g


def _args(g: Window2d):
    return tuple(i32(v) for v in (g.n, g.c, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.oh, g.ow))


def _float(op, a, what):
    try:
        return dtype_suffix(a.dtype)
    except TypeError:
        raise TypeError(f"{op}: expected {what} of dtype float32 or float64, got {a.dtype}") from None


def _check_backward(op, dy, x_shape, kernel, stride, padding):
    """(suffix, window) of a backward; the checks and messages of NumpyOps, in its order."""
    suf = _float(f"{op} backward", dy, "dy")
    g = _geometry(op, tuple(x_shape), kernel, stride, padding)
    want = (g.n, g.c, g.oh, g.ow)
    if tuple(dy.shape) != want:
        raise ValueError(f"{op} backward: expected dy of shape {want}, got {tuple(dy.shape)}")
    return suf, g


def max_pool2d_forward(ctx, x, kernel, stride, padding):
    op = "max_pool2d"
    suf = _float(op, x, "input")
    g = _geometry(op, x.shape, kernel, stride, padding)
    xp = ctx.xp
    x = xp.ascontiguousarray(x)
    y = xp.empty((g.n, g.c, g.oh, g.ow), dtype=x.dtype)
    argmax = xp.empty((g.n, g.c, g.oh, g.ow), dtype=np.int32)
    grid, block = grid_1d(y.size)
    ctx.kernel(MAXPOOL, f"maxpool2d_fwd_{suf}")(grid, block, (x, y, argmax, *_args(g)))
    return y, argmax


def max_pool2d_backward(ctx, dy, argmax, x_shape, kernel, stride, padding):
    suf, g = _check_backward("max_pool2d", dy, x_shape, kernel, stride, padding)
    if not hasattr(argmax, "dtype") or np.dtype(argmax.dtype) != np.int32 or tuple(argmax.shape) != tuple(dy.shape):
        raise ValueError(f"max_pool2d backward: expected an int32 argmax of shape {tuple(dy.shape)}, got "
                         f"{getattr(argmax, 'dtype', type(argmax).__name__)} of shape "
                         f"{tuple(getattr(argmax, 'shape', ()))}")
    xp = ctx.xp
    dy = xp.ascontiguousarray(dy)
    argmax = xp.ascontiguousarray(argmax)
    dx = xp.empty(g.in_shape, dtype=dy.dtype)
    grid, block = grid_1d(dx.size)
    ctx.kernel(MAXPOOL, f"maxpool2d_bwd_{suf}")(grid, block, (dy, argmax, dx, *_args(g)))
    return dx


def avg_pool2d_forward(ctx, x, kernel, stride, padding):
    op = "avg_pool2d"
    suf = _float(op, x, "input")
    g = _geometry(op, x.shape, kernel, stride, padding)
    xp = ctx.xp
    x = xp.ascontiguousarray(x)
    y = xp.empty((g.n, g.c, g.oh, g.ow), dtype=x.dtype)
    grid, block = grid_1d(y.size)
    ctx.kernel(AVGPOOL, f"avgpool2d_fwd_{suf}")(grid, block, (x, y, *_args(g)))
    return y


def avg_pool2d_backward(ctx, dy, x_shape, kernel, stride, padding):
    suf, g = _check_backward("avg_pool2d", dy, x_shape, kernel, stride, padding)
    xp = ctx.xp
    dy = xp.ascontiguousarray(dy)
    dx = xp.empty(g.in_shape, dtype=dy.dtype)
    grid, block = grid_1d(dx.size)
    ctx.kernel(AVGPOOL, f"avgpool2d_bwd_{suf}")(grid, block, (dy, dx, *_args(g)))
    return dx
