"""Launcher for cuda_kernels/dropout.cu: inverted-dropout masks from NumPy's Philox4x64-10 stream.

    mask = dropout_mask(ctx, shape, p, seed, counter, dtype)

Element k of the (C-order) mask is 0 when u_k < p, else 1/(1-p), where u_k = (word_k >> 11) * 2**-53
and word_k is the k-th output of `np.random.Philox(key=seed, counter=counter).random_raw()`.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet.cuda.loader import ceil_div, dtype_suffix, fscalar, grid_1d, i64, u64

SOURCE = "dropout.cu"
_WORD = 2**64 - 1


def _words(v: int, nwords: int) -> list[int]:
    """Little-endian 64-bit words of a non-negative int (NumPy's layout for key and counter)."""
    return [(v >> (64 * i)) & _WORD for i in range(nwords)]


def dropout_mask(ctx, shape, p: float, seed: int, counter: int, dtype):
    """The mask, (shape) of `dtype`; arguments validated by the facade (gpunet.ops.checks.dropout: p in
    [0, 1), seed < 2**128, counter < 2**256)."""
    suf = dtype_suffix(dtype)
    mask = ctx.xp.empty(shape, dtype=np.dtype(dtype))
    n = math.prod(shape)
    if n == 0:
        return mask
    k0, k1 = _words(seed, 2)
    c = _words(counter, 4)
    scale = fscalar(dtype, 1.0 / (1.0 - p))      # in double, rounded once to the dtype (like astype)
    grid, block = grid_1d(ceil_div(n, 4))        # one thread per counter block of four words
    ctx.kernel(SOURCE, f"dropout_mask_{suf}")(
        grid, block, (mask, i64(n), u64(k0), u64(k1), *(u64(w) for w in c), np.float64(p), scale))
    return mask
