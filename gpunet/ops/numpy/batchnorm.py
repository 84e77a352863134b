"""Batch normalisation on NumPy over (N, C) or (N, C, H, W), statistics per channel (PyTorch semantics).

Inputs are viewed as (N, C, S), S = H*W (S = 1 for (N, C)). Per-channel sums are taken in two
steps: a pairwise NumPy sum along S for each (n, c) row (in the data's dtype), then a float64 sum
over N. All per-channel arithmetic (mean, variance, invstd, the affine coefficients) is float64;
full-size arrays stay in the input's dtype.

Stability (data far from zero, e.g. 1000 + noise in float32). Training uses a shifted two-pass
scheme: pass 1 gives a pivot K = the channel mean rounded to the dtype; then d = x - K is formed once
(exact by Sterbenz's lemma for data within a factor 2 of K) and the statistics come from d:
mean = K + sum(d)/M, var = sum(d^2)/M - (sum(d)/M)^2 (the correction term is tiny because K is
already the mean to working precision). The output is y = d*scale + shift with
scale = gamma*invstd and shift = beta - (mean - K)*scale, so the large offset never enters a
rounding. No sum of squares of x itself is ever formed. For far-from-zero data (a batch mean more
than FOLD_MAX_OFFSET stds from zero) the backward forms x - mean once and corrects for the rounding
of the (dtype) mean it is given in the same way: it also sums x - mean and subtracts that residual
mean, so float32 gradients stay accurate; nearer zero it works on x itself (_backward_folded), and
the eval forward likewise folds the running mean into its shift.

Running statistics are updated in place (any strided view works): running = (1 - momentum)*running
+ momentum*batch, with the unbiased variance var*M/(M - 1).

Speed: every pass is memory-bound, so the batch is cut into blocks of about BN_BLOCK_BYTES that stay in
cache while all the passes of one stage run over them, and on large inputs the blocks are shared
between threads.
"""
from __future__ import annotations

import numpy as np

from gpunet.ops.numpy.util import parallel, workspace

BN_BLOCK_BYTES = 1 << 20   # a block of every pass stays in cache for all the passes of one stage
# Each thread's share of a pass is at least this many elements: below 2M one thread, as a hand-off
# costs more than the halved pass saves (benchmarks/README.md, "NumPy ops").
BN_PARALLEL_MIN_ELEMENTS = 1 << 20


def _bn_blocks(n0: int, n1: int, per_image: int):
    step = max(1, BN_BLOCK_BYTES // max(1, per_image))
    return [(a, min(a + step, n1)) for a in range(n0, n1, step)]


def _rows_sum(a3, out) -> None:
    """out[n, c] = sum over s of a3[n, c, s], in a3's dtype.

    einsum, not np.add.reduce: reduce runs its pairwise loop once per (n, c) row, about 3x slower on
    these shapes (S = 64-1024: 95 vs 32 us for (64, 64, 64) float32, 194 vs 52 for (128, 32, 196);
    one thread). einsum's SIMD partial sums have the same order of rounding error (measured against
    float64: 2.2e-6 vs 3.0e-6 on sums of 64 unit normals, 2.1e-5 vs 1.1e-5 on sums of 1024); the
    sums over N are float64 either way."""
    np.einsum("ncs->nc", a3, out=out)


def _rows_dot(a3, b3, out) -> None:
    """out[n, c] = sum over s of a3[n, c, s] * b3[n, c, s]."""
    if a3.shape[2] == 1:
        np.multiply(a3[:, :, 0], b3[:, :, 0], out=out)
    else:
        np.einsum("ncs,ncs->nc", a3, b3, out=out)


def _row(v, dt, s: int) -> np.ndarray:
    """A per-channel vector as a contiguous (C, S) array of dtype dt (each value repeated S times), for
    broadcasting over (nb, C, S). A (C, 1) column would broadcast too, but NumPy then runs its inner
    loop per (n, c) row of S elements, at about half the speed of one contiguous C*S-long loop per
    image (measured: 1.55 vs 0.86 ms for a multiply of a (64, 64, 1024) float32 array). The row costs
    one image's worth of memory."""
    return np.repeat(np.asarray(v, dtype=dt).reshape(-1), s).reshape(-1, s)


def _as3(a, n, c, s):
    return a.reshape(n, c, s)  # a view when contiguous, else a copy


def batch_norm_train(shape, x, gamma, beta, running_mean, running_var, momentum, eps, passes=None):
    """shape: (N, C, S) from gpunet.ops.checks.batch_norm. passes: None, or the oneDNN engine's
    element-wise passes (gpunet.onednn.binary.ChannelPasses) for the full-size affine steps (float32)."""
    dt, (n, c, s) = x.dtype, shape
    m = n * s
    momentum, eps = float(momentum), float(eps)
    x3 = _as3(x, n, c, s)
    per_image = c * s * dt.itemsize
    rows = np.empty((3, n, c), dtype=dt)  # per (n, c): sum x, then sum d and sum d^2

    def pivot_pass(n0, n1):
        for a, b in _bn_blocks(n0, n1, per_image):
            _rows_sum(x3[a:b], rows[0, a:b])

    parallel(pivot_pass, n, x.size, BN_PARALLEL_MIN_ELEMENTS)
    pivot_c = (rows[0].sum(axis=0, dtype=np.float64) / m).astype(dt)
    pivot = _row(pivot_c, dt, s)
    y = np.empty((n, c, s), dtype=dt)

    def shift_pass(n0, n1):  # d = x - K, and its sums
        for a, b in _bn_blocks(n0, n1, per_image):
            d = y[a:b]
            np.subtract(x3[a:b], pivot, out=d)
            _rows_sum(d, rows[1, a:b])
            _rows_dot(d, d, rows[2, a:b])

    parallel(shift_pass, n, x.size, BN_PARALLEL_MIN_ELEMENTS)
    dmean = rows[1].sum(axis=0, dtype=np.float64) / m
    var = np.maximum(rows[2].sum(axis=0, dtype=np.float64) / m - dmean * dmean, 0.0)
    invstd = 1.0 / np.sqrt(var + eps)
    scale64 = gamma.astype(np.float64) * invstd
    scale, shift = _row(scale64, dt, s), _row(beta.astype(np.float64) - dmean * scale64, dt, s)

    def affine_pass(n0, n1):  # y = d*scale + shift
        for a, b in _bn_blocks(n0, n1, per_image):
            np.multiply(y[a:b], scale, out=y[a:b])
            np.add(y[a:b], shift, out=y[a:b])

    if passes is not None and dt == np.float32:   # one multi-threaded pass, the same roundings
        passes.affine(y, scale64.astype(dt), (beta.astype(np.float64) - dmean * scale64).astype(dt), out=y)
    else:
        parallel(affine_pass, n, x.size, BN_PARALLEL_MIN_ELEMENTS)
    mean = pivot_c.astype(np.float64) + dmean
    running_mean[...] = (1.0 - momentum) * running_mean.astype(np.float64) + momentum * mean
    running_var[...] = (1.0 - momentum) * running_var.astype(np.float64) + momentum * var * (m / (m - 1))
    return y.reshape(x.shape), mean.astype(dt), invstd.astype(dt)


# The eval forward (and the backward, _backward_folded) folds the mean into the shift, two passes
# instead of three, when every channel's mean lies within this many standard deviations of zero: the
# extra rounding is then a few ulps of y (benchmarks/README.md, "NumPy ops").
FOLD_MAX_OFFSET = 8.0


def eval_coefficients(gamma, beta, running_mean, running_var, eps, dt):
    """Per-channel vectors (dtype dt) of the eval forward y = (x - center)*scale + shift, center None
    when every running mean lies within FOLD_MAX_OFFSET stds of zero (then folded into the shift:
    y = x*scale + shift). Shared by both CPU engines, so they compute the same roundings."""
    std = np.sqrt(running_var.astype(np.float64) + float(eps))
    scale64 = gamma.astype(np.float64) / std
    rm64 = running_mean.astype(np.float64)
    scale = scale64.astype(dt)
    if bool(np.all(np.abs(rm64) <= FOLD_MAX_OFFSET * std)):
        return scale, (beta.astype(np.float64) - rm64 * scale64).astype(dt), None
    return scale, np.asarray(beta, dtype=dt), np.asarray(running_mean, dtype=dt)


def batch_norm_eval(shape, x, gamma, beta, running_mean, running_var, eps):
    dt, (n, c, s) = x.dtype, shape
    scale_c, shift_c, center_c = eval_coefficients(gamma, beta, running_mean, running_var, eps, dt)
    scale, shift = _row(scale_c, dt, s), _row(shift_c, dt, s)
    center = None if center_c is None else _row(center_c, dt, s)
    x3 = _as3(x, n, c, s)
    y = np.empty((n, c, s), dtype=dt)

    def apply(n0, n1):
        for a, b in _bn_blocks(n0, n1, c * s * dt.itemsize):
            if center is None:   # x*scale + shift
                np.multiply(x3[a:b], scale, out=y[a:b])
            else:                # (x - running_mean) * scale + beta: the offset is removed exactly first
                np.subtract(x3[a:b], center, out=y[a:b])
                np.multiply(y[a:b], scale, out=y[a:b])
            np.add(y[a:b], shift, out=y[a:b])

    parallel(apply, n, x.size, BN_PARALLEL_MIN_ELEMENTS)
    return y.reshape(x.shape)


def batch_norm_backward(shape, dy, x, gamma, mean, invstd, passes=None):
    dt, (n, c, s) = dy.dtype, shape
    m = n * s
    x3, dy3 = _as3(x, n, c, s), _as3(dy, n, c, s)
    per_image = c * s * dt.itemsize
    inv = invstd.astype(np.float64)
    mean64 = mean.astype(np.float64)
    if np.all(np.abs(mean64) * inv <= FOLD_MAX_OFFSET):
        return _backward_folded(dy3, x3, gamma, mean64, inv, x.shape, passes)
    mu = _row(mean, dt, s)
    xc = np.empty((n, c, s), dtype=dt)      # x - mean; becomes dx
    rows = np.empty((3, n, c), dtype=dt)    # per (n, c): sum dy, sum dy*xc, sum xc

    def sums_pass(n0, n1):
        for a, b in _bn_blocks(n0, n1, per_image):
            np.subtract(x3[a:b], mu, out=xc[a:b])
            _rows_sum(dy3[a:b], rows[0, a:b])
            _rows_dot(dy3[a:b], xc[a:b], rows[1, a:b])
            _rows_sum(xc[a:b], rows[2, a:b])

    parallel(sums_pass, n, x.size, BN_PARALLEL_MIN_ELEMENTS)
    dbeta = rows[0].sum(axis=0, dtype=np.float64)
    resid = rows[2].sum(axis=0, dtype=np.float64) / m          # mean of (x - mean): its rounding error
    dxc = rows[1].sum(axis=0, dtype=np.float64) - resid * dbeta  # sum dy*(x - true mean)
    dgamma, dbeta = _dx_pass(dy3, xc, resid, gamma, inv, dbeta, dxc, xc, passes)
    return xc.reshape(x.shape), dgamma, dbeta


def _backward_folded(dy3, x3, gamma, mean64, inv, shape, passes=None):
    """The backward for batch means within FOLD_MAX_OFFSET stds of zero: x - mean is never formed.
    Pass 1 only reads (sum dy and sum dy*x per row); sum dy*(x - mean) = sum dy*x - mean*sum dy then
    cancels at most a factor ~FOLD_MAX_OFFSET, and dx = a*dy + b*x + (c - b*mean): 6 operations per
    element instead of 8, and no x - mean array written and read back (benchmarks/README.md)."""
    n, c, s = x3.shape
    per_image = c * s * x3.dtype.itemsize
    rows = np.empty((2, n, c), dtype=x3.dtype)    # per (n, c): sum dy, sum dy*x

    def sums_pass(n0, n1):
        for a, b in _bn_blocks(n0, n1, per_image):
            _rows_sum(dy3[a:b], rows[0, a:b])
            _rows_dot(dy3[a:b], x3[a:b], rows[1, a:b])

    parallel(sums_pass, n, x3.size, BN_PARALLEL_MIN_ELEMENTS)
    dbeta = rows[0].sum(axis=0, dtype=np.float64)
    dxc = rows[1].sum(axis=0, dtype=np.float64) - mean64 * dbeta
    dx = np.empty(x3.shape, dtype=x3.dtype)
    dgamma, dbeta = _dx_pass(dy3, x3, mean64, gamma, inv, dbeta, dxc, dx, passes)
    return dx.reshape(shape), dgamma, dbeta


def _dx_pass(dy3, src3, src_mean, gamma, inv, dbeta, dxc, out3, passes=None):
    """out3 = dx = gamma*invstd*(dy - dbeta/M - xhat*dgamma/M) = a*dy + b*src + c, where src is x - mean
    whose own mean is src_mean (the rounding residual), or x itself with src_mean = the mean; out3 may
    be src3. dbeta = sum dy and dxc = sum dy*(x - mean) per channel, float64. Returns (dgamma, dbeta)
    in the data's dtype."""
    n, c, s = dy3.shape
    dt, m = dy3.dtype, n * s
    a_ = gamma.astype(np.float64) * inv
    b_ = -a_ * inv * inv * dxc / m
    c_ = -a_ * dbeta / m - b_ * src_mean
    if passes is not None and dt == np.float32:   # (src*b + c) + dy*a: the same roundings, two passes
        passes.affine(src3, b_.astype(dt), c_.astype(dt), out=out3)
        passes.axpy(dy3, a_.astype(dt), out3)
        return (dxc * inv).astype(dt), dbeta.astype(dt)
    a, b, cc = _row(a_, dt, s), _row(b_, dt, s), _row(c_, dt, s)

    def blocks(n0, n1):
        for lo, hi in _bn_blocks(n0, n1, c * s * dt.itemsize):
            d = out3[lo:hi]
            np.multiply(src3[lo:hi], b, out=d)
            np.add(d, cc, out=d)
            t = workspace().get("bn_dx_tmp", d.shape, dt)
            np.multiply(dy3[lo:hi], a, out=t)
            np.add(d, t, out=d)

    parallel(blocks, n, dy3.size, BN_PARALLEL_MIN_ELEMENTS)
    return (dxc * inv).astype(dt), dbeta.astype(dt)
