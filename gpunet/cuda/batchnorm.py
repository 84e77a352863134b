"""Launcher for cuda_kernels/batchnorm.cu: batch norm over (N, C) or (N, C, H, W), per channel.

    y, mean, invstd = batch_norm_train(ctx, shape, x, gamma, beta, running_mean, running_var, momentum, eps)
    y = batch_norm_eval(ctx, shape, x, gamma, beta, running_mean, running_var, eps)
    dx, dgamma, dbeta = batch_norm_backward(ctx, shape, dy, x, gamma, mean, invstd)

`shape` is (N, C, S) from gpunet.ops.checks.batch_norm, run by the facade (gpunet.cuda.ops); the
launchers only refuse what the kernels' 32-bit indexing cannot reach.

Training runs three launches (partial statistics, a per-channel finalize that also updates the
running statistics in place, normalise), the backward three (partial sums, finalize, dx). Each
channel's reduction is split over P blocks, P depending on the shape only, so the summation order,
and every bit of the result, is the same on every device and run (see the kernel file's header).
"""
from __future__ import annotations

from gpunet.cuda.loader import INT32_MAX, ceil_div, dtype_suffix, fscalar, grid_1d, i32

SOURCE = "batchnorm.cu"
BN_THREADS = 256          # mirrors BN_THREADS in batchnorm.cu (threads per reduction block)
# Split policy for one channel's M = N*H*W values: aim at ~BN_TARGET_BLOCKS blocks in all (about 4
# per SM on a 132-SM H100, enough to fill any current GPU) but give each block at least
# BN_MIN_PER_BLOCK values (4 per thread) so that its work outweighs writing and merging its partial.
BN_TARGET_BLOCKS = 512
BN_MIN_PER_BLOCK = 4 * BN_THREADS


def split(c: int, m: int) -> tuple[int, int]:
    """(P, chunk): channel reductions of m values cut into P chunks of `chunk` (last shorter, none empty)."""
    want = max(1, min(ceil_div(BN_TARGET_BLOCKS, c), m // BN_MIN_PER_BLOCK))
    chunk = ceil_div(m, want)
    return ceil_div(m, chunk), chunk


def _geometry(op, shape, x):
    """(N, C, S, suffix) of a validated call, within the kernels' 32-bit indexing."""
    n, c, s = shape
    if n * c * s > INT32_MAX:
        raise ValueError(f"{op}: {n * c * s} elements exceed the kernels' 32-bit indexing (at most {INT32_MAX})")
    return n, c, s, dtype_suffix(x.dtype)


def batch_norm_train(ctx, shape, x, gamma, beta, running_mean, running_var, momentum, eps):
    n, c, s, suf = _geometry("batch_norm", shape, x)
    m = n * s
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


def batch_norm_eval(ctx, shape, x, gamma, beta, running_mean, running_var, eps):
    n, c, s, suf = _geometry("batch_norm", shape, x)
    xp = ctx.xp
    x, gamma, beta, rm, rv = (xp.ascontiguousarray(a) for a in (x, gamma, beta, running_mean, running_var))
    y = xp.empty(x.shape, dtype=x.dtype)
    grid, block = grid_1d(x.size)
    ctx.kernel(SOURCE, f"bn_eval_{suf}")(
        grid, block, (x, y, rm, rv, gamma, beta, i32(n), i32(c), i32(s), fscalar(x.dtype, eps)))
    return y


def batch_norm_backward(ctx, shape, dy, x, gamma, mean, invstd):
    n, c, s, suf = _geometry("batch_norm backward", shape, x)
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
