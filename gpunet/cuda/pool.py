"""Launchers for cuda_kernels/maxpool2d.cu and cuda_kernels/avgpool2d.cu.

    y, argmax = max_pool2d_forward(ctx, x, win)
    dx = max_pool2d_backward(ctx, dy, argmax, win)
    y = avg_pool2d_forward(ctx, x, win)
    dx = avg_pool2d_backward(ctx, dy, win)

`ctx` is a `gpunet.cuda.loader.KernelContext`; `win` the window the facade (gpunet.cuda.ops, through
gpunet.ops.checks) validated; the launchers add the kernels' 32-bit limits (the kernels re-check the
geometry). Inputs are made C-contiguous here.
Tie, NaN and index rules are stated at the top of the kernel files.
"""
from __future__ import annotations

import numpy as np

from gpunet.cuda.loader import INT32_MAX, dtype_suffix, grid_1d, i32
from gpunet.ops.geometry import Window2d

MAXPOOL = "maxpool2d.cu"
AVGPOOL = "avgpool2d.cu"


def _limits(op, g: Window2d) -> Window2d:
    """The validated window, checked against the kernels' 32-bit indexing (docs/kernel_limits.md):
    tensors and the padded extents H + 2*padding, W + 2*padding (window ends) below 2^31. The kernels
    re-check the same and write nothing otherwise, so refusing here keeps an output from being garbage."""
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


def max_pool2d_forward(ctx, x, g: Window2d):
    suf = dtype_suffix(x.dtype)
    _limits("max_pool2d", g)
    xp = ctx.xp
    x = xp.ascontiguousarray(x)
    y = xp.empty((g.n, g.c, g.oh, g.ow), dtype=x.dtype)
    argmax = xp.empty((g.n, g.c, g.oh, g.ow), dtype=np.int32)
    grid, block = grid_1d(y.size)
    ctx.kernel(MAXPOOL, f"maxpool2d_fwd_{suf}")(grid, block, (x, y, argmax, *_args(g)))
    return y, argmax


def max_pool2d_backward(ctx, dy, argmax, g: Window2d):
    suf = dtype_suffix(dy.dtype)
    _limits("max_pool2d", g)
    xp = ctx.xp
    dy = xp.ascontiguousarray(dy)
    argmax = xp.ascontiguousarray(argmax)
    dx = xp.empty(g.in_shape, dtype=dy.dtype)
    grid, block = grid_1d(dx.size)
    ctx.kernel(MAXPOOL, f"maxpool2d_bwd_{suf}")(grid, block, (dy, argmax, dx, *_args(g)))
    return dx


def avg_pool2d_forward(ctx, x, g: Window2d):
    suf = dtype_suffix(x.dtype)
    _limits("avg_pool2d", g)
    xp = ctx.xp
    x = xp.ascontiguousarray(x)
    y = xp.empty((g.n, g.c, g.oh, g.ow), dtype=x.dtype)
    grid, block = grid_1d(y.size)
    ctx.kernel(AVGPOOL, f"avgpool2d_fwd_{suf}")(grid, block, (x, y, *_args(g)))
    return y


def avg_pool2d_backward(ctx, dy, g: Window2d):
    suf = dtype_suffix(dy.dtype)
    _limits("avg_pool2d", g)
    xp = ctx.xp
    dy = xp.ascontiguousarray(dy)
    dx = xp.empty(g.in_shape, dtype=dy.dtype)
    grid, block = grid_1d(dx.size)
    ctx.kernel(AVGPOOL, f"avgpool2d_bwd_{suf}")(grid, block, (dy, dx, *_args(g)))
    return dx
