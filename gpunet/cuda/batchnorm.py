"""Launcher for cuda_kernels/batchnorm.cu: batch norm over (N, C) or (N, C, H, W), per channel.

    y, mean, invstd = batch_norm_train(ctx, x, gamma, beta, running_mean, running_var, momentum, eps)
    y = batch_norm_eval(ctx, x, gamma, beta, running_mean, running_var, eps)
    dx, dgamma, dbeta = batch_norm_backward(ctx, dy, x, gamma, mean, invstd)

Training runs three launches (partial statistics, a per-channel finalize that also updates the
running statistics in place, normalise), the backward three (partial sums, finalize, dx). Each
channel's reduction is split over P blocks, P depending on the shape only, so the summation order,
and every bit of the result, is the same on every device and run (see the kernel file's header).
"""
from __future__ import annotations

import numpy as np

from gpunet.cuda.loader import ceil_div, dtype_suffix, fscalar, grid_1d, i32

SOURCE = "batchnorm.cu"
BN_THREADS = 256          # mirrors BN_THREADS in batchnorm.cu (threads per reduction block)
# Split policy for one channel's M = N*H*W values: aim at ~BN_TARGET_BLOCKS blocks in all (about 4
# per SM on a 132-SM H100, enough to fill any current GPU) but give each block at least
# BN_MIN_PER_BLOCK values (4 per thread) so that its work outweighs writing and merging its partial.
BN_TARGET_BLOCKS = 512
BN_MIN_PER_BLOCK = 4 * BN_THREADS
_INT32_MAX = 2**31 - 1


def split(c: int, m: int) -> tuple[int, int]:
    """(P, chunk): channel reductions of m values cut into P chunks of `chunk` (last shorter, none empty)."""
    want = max(1, min(ceil_div(BN_TARGET_BLOCKS, c), m // BN_MIN_PER_BLOCK))
    chunk = ceil_div(m, want)
    return ceil_div(m, chunk), chunk


def _layout(op, x):
    """(N, C, S) of an (N, C) or (N, C, H, W) input."""
    if x.ndim not in (2, 4):
        raise ValueError(f"{op}: expected input of shape (N, C) or (N, C, H, W), got {tuple(x.shape)}")
    if min(x.shape) < 1:
        raise ValueError(f"{op}: input has an empty dimension: {tuple(x.shape)}")
    n, c = int(x.shape[0]), int(x.shape[1])
    s = int(x.shape[2]) * int(x.shape[3]) if x.ndim == 4 else 1
    if n * c * s > _INT32_MAX:
        raise ValueError(f"{op}: {n * c * s} elements exceed the kernels' 32-bit indexing (at most {_INT32_MAX})")
    return n, c, s


def _check_float(op, x, **vectors):
    try:
        suf = dtype_suffix(x.dtype)
    except TypeError:
        raise TypeError(f"{op}: expected input of dtype float32 or float64, got {x.dtype}") from None
    c = int(x.shape[1])
    for name, v in vectors.items():
        if tuple(v.shape) != (c,):
            raise ValueError(f"{op}: expected {name} of shape ({c},), got {tuple(v.shape)}")
        if np.dtype(v.dtype) != np.dtype(x.dtype):
            raise TypeError(f"{op}: {name} has dtype {v.dtype} but the input is {x.dtype}; they must match")
    return suf


def batch_norm_train(ctx, x, gamma, beta, running_mean, running_var, momentum, eps):
    op = "batch_norm"
    n, c, s = _layout(op, x)
    suf = _check_float(op, x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    m = n * s
    if m < 2:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(x.shape)}")
    xp = ctx.xp
    x, gamma, beta = (xp.ascontiguousarray(a) for a in (x, gamma, beta))
    # The finalize kernel updates the running statistics in place; a non-contiguous buffer is updated
    # through a contiguous copy written back afterwards.
    rm = running_mean if running_mean.flags.c_contiguous else xp.ascontiguousarray(running_mean)
    rv = running_var if running_var.flags.c_contiguous else xp.ascontiguousarray(running_var)
    p, chunk = split(c, m)
    part_mean = xp.empty((c, p), dtype=x.dtype)
    part_m2 = xp.empty((c, p), dtype=x.dtype)
    mean = xp.empty((c,), dtype=x.dtype)
    invstd = xp.empty((c,), dtype=x.dtype)
    y = xp.empty(x.shape, dtype=x.dtype)
    block = (BN_THREADS, 1, 1)
    ctx.kernel(SOURCE, f"bn_stats_partial_{suf}")(
        (c, p, 1), block, (x, part_mean, part_m2, i32(n), i32(c), i32(s), i32(p), i32(chunk)))
    ctx.kernel(SOURCE, f"bn_stats_finalize_{suf}")(
        (c, 1, 1), block, (x, part_mean, part_m2, mean, invstd, rm, rv, i32(n), i32(c), i32(s), i32(p),
                           i32(chunk), fscalar(x.dtype, eps), fscalar(x.dtype, momentum)))
    grid, eblock = grid_1d(x.size)
    ctx.kernel(SOURCE, f"bn_apply_{suf}")(grid, eblock, (x, y, mean, invstd, gamma, beta, i32(n), i32(c), i32(s)))
    if rm is not running_mean:
        running_mean[...] = rm
    if rv is not running_var:
        running_var[...] = rv
    return y, mean, invstd


def batch_norm_eval(ctx, x, gamma, beta, running_mean, running_var, eps):
    op = "batch_norm"
    n, c, s = _layout(op, x)
    suf = _check_float(op, x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    xp = ctx.xp
    x, gamma, beta, rm, rv = (xp.ascontiguousarray(a) for a in (x, gamma, beta, running_mean, running_var))
    y = xp.empty(x.shape, dtype=x.dtype)
    grid, block = grid_1d(x.size)
    ctx.kernel(SOURCE, f"bn_eval_{suf}")(
        grid, block, (x, y, rm, rv, gamma, beta, i32(n), i32(c), i32(s), fscalar(x.dtype, eps)))
    return y


def batch_norm_backward(ctx, dy, x, gamma, mean, invstd):
    op = "batch_norm backward"
    n, c, s = _layout(op, x)
    suf = _check_float(op, x, gamma=gamma, mean=mean, invstd=invstd)
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"{op}: expected dy of shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    if np.dtype(dy.dtype) != np.dtype(x.dtype):
        raise TypeError(f"{op}: dy has dtype {dy.dtype} but the input is {x.dtype}; they must match")
    xp = ctx.xp
    dy, x, gamma, mean, invstd = (xp.ascontiguousarray(a) for a in (dy, x, gamma, mean, invstd))
    m = n * s
    p, chunk = split(c, m)
    part_dy = xp.empty((c, p), dtype=x.dtype)
    part_dy_xhat = xp.empty((c, p), dtype=x.dtype)
    dgamma = xp.empty((c,), dtype=x.dtype)
    dbeta = xp.empty((c,), dtype=x.dtype)
    dx = xp.empty(x.shape, dtype=x.dtype)
    block = (BN_THREADS, 1, 1)
    ctx.kernel(SOURCE, f"bn_bwd_partial_{suf}")(
        (c, p, 1), block, (dy, x, mean, invstd, part_dy, part_dy_xhat, i32(n), i32(c), i32(s), i32(p), i32(chunk)))
    ctx.kernel(SOURCE, f"bn_bwd_finalize_{suf}")(
        (c, 1, 1), block, (part_dy, part_dy_xhat, dgamma, dbeta, i32(c), i32(p)))
    grid, eblock = grid_1d(x.size)
    ctx.kernel(SOURCE, f"bn_bwd_dx_{suf}")(
        grid, eblock, (dy, x, mean, invstd, gamma, dgamma, dbeta, dx, i32(n), i32(c), i32(s)))
    return dx, dgamma, dbeta
