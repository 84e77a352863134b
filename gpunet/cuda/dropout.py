"""Launcher for cuda_kernels/dropout.cu: inverted-dropout masks from NumPy's Philox4x64-10 stream.

    mask = dropout_mask(ctx, shape, p, seed, counter, dtype)

Element k of the (C-order) mask is 0 when u_k < p, else 1/(1-p), where u_k = (word_k >> 11) * 2**-53
and word_k is the k-th output of `np.random.Philox(key=seed, counter=counter).random_raw()`.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet.cuda.loader import dtype_suffix, fscalar, grid_1d, i64, u64

SOURCE = "dropout.cu"
KEY_BITS = 128          # Philox4x64 key: two 64-bit words
COUNTER_BITS = 256      # Philox4x64 counter: four 64-bit words
_WORD = 2**64 - 1


def _words(v: int, nwords: int) -> list[int]:
    """Little-endian 64-bit words of a non-negative int (NumPy's layout for key and counter)."""
    return [(v >> (64 * i)) & _WORD for i in range(nwords)]


def check_args(shape, p, seed, counter) -> tuple[tuple[int, ...], float, int, int]:
    """Validated (shape, p, seed, counter); the same rules as NumPy's Philox(key=, counter=)."""
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if any(s < 0 for s in shape):
        raise ValueError(f"dropout_mask: shape must be non-negative, got {shape}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout_mask: p must be in [0, 1], got {p}")
    for name, v, bits in (("seed", seed, KEY_BITS), ("counter", counter, COUNTER_BITS)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"dropout_mask: {name} must be an int, got {type(v).__name__}")
        if not 0 <= int(v) < 2**bits:
            raise ValueError(f"dropout_mask: {name} must be in [0, 2**{bits}), got {v}")
    return shape, p, int(seed), int(counter)


def dropout_mask(ctx, shape, p: float, seed: int, counter: int, dtype):
    shape, p, seed, counter = check_args(shape, p, seed, counter)
    suf = dtype_suffix(dtype)
    mask = ctx.xp.empty(shape, dtype=np.dtype(dtype))
    n = math.prod(shape)
    if n == 0:
        return mask
    k0, k1 = _words(seed, 2)
    c = _words(counter, 4)
    # 1/(1-p) in double, rounded once to the dtype (like astype); p == 1 drops every element (u < 1).
    scale = fscalar(dtype, 1.0 / (1.0 - p) if p < 1.0 else 0.0)
    grid, block = grid_1d(-(-n // 4))            # one thread per counter block of four words
    ctx.kernel(SOURCE, f"dropout_mask_{suf}")(
        grid, block, (mask, i64(n), u64(k0), u64(k1), *(u64(w) for w in c), np.float64(p), scale))
    return mask
