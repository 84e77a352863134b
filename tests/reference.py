"""Straightforward loop-based reference implementations of the hot ops, in float64 (or exact integers).

A second oracle, independent of gpunet.ops.numpy (which is vectorised and fast): every function
here loops over output elements and spells the definition out, so it is easy to check by eye and
slow. Use small shapes. The CUDA-kernel tests may use it too.

Conventions are those of gpunet.ops.interface: NCHW, weight (C_out, C_in, kh, kw), zero padding for
convolution, -inf padding for max pooling (padding never wins), count_include_pad=True for average
pooling, PyTorch batch-norm semantics, and dropout masks from Philox4x64-10 as NumPy streams it.
"""
from __future__ import annotations

import math

import numpy as np


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


# --- convolution ------------------------------------------------------------------------------------

def conv2d(x, w, b=None, stride=1, padding=0, relu=False):
    """y[n, co, oh, ow] = b[co] + sum_{ci, i, j} x[n, ci, oh*sh - ph + i, ow*sw - pw + j] * w[co, ci, i, j]
    (zero outside the image), then max(y, 0) when relu."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    oh, ow = _out_size(h, kh, sh, ph), _out_size(wd, kw, sw, pw)
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((n, co, oh, ow))
    for a in range(n):
        for o in range(co):
            for r in range(oh):
                for q in range(ow):
                    patch = xp[a, :, r * sh:r * sh + kh, q * sw:q * sw + kw]
                    y[a, o, r, q] = np.sum(patch * w[o]) + (0.0 if b is None else float(b[o]))
    return np.maximum(y, 0.0) if relu else y


def conv2d_backward(dy, x, w, b=None, stride=1, padding=0, relu=False):
    """(dx, dw, db) of conv2d: every output's gradient g (dy, or 0 where relu and y <= 0) is spread
    back over its window. db is None when b is None."""
    x, w, dy = np.asarray(x, np.float64), np.asarray(w, np.float64), np.asarray(dy, np.float64)
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    y = conv2d(x, w, b, stride, padding, relu=False)
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    db = np.zeros(co)
    for a in range(n):
        for o in range(co):
            for r in range(y.shape[2]):
                for q in range(y.shape[3]):
                    g = dy[a, o, r, q] if not relu or y[a, o, r, q] > 0 else 0.0
                    win = (a, slice(None), slice(r * sh, r * sh + kh), slice(q * sw, q * sw + kw))
                    dxp[win] += g * w[o]
                    dw[o] += g * xp[win]
                    db[o] += g
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw, (None if b is None else db)


# --- pooling ------------------------------------------------------------------------------------------

def max_pool2d(x, kernel, stride=None, padding=0):
    """(y, argmax int32). Each window is scanned in row-major order over its REAL inputs (padding is
    skipped, i.e. -inf that never wins): the first input starts the maximum; a later value replaces
    it when strictly greater, or when it is NaN and the maximum is not (so the first NaN wins and
    stays). argmax = h*W + w of the winner in its (n, c) plane."""
    x = np.asarray(x)
    n, c, h, wd = x.shape
    (kh, kw) = _pair(kernel)
    (sh, sw) = _pair(kernel if stride is None else stride)
    (ph, pw) = _pair(padding)
    oh, ow = _out_size(h, kh, sh, ph), _out_size(wd, kw, sw, pw)
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    am = np.zeros((n, c, oh, ow), dtype=np.int32)
    for a in range(n):
        for ch in range(c):
            for r in range(oh):
                for q in range(ow):
                    best, where = None, None
                    for i in range(kh):
                        for j in range(kw):
                            hh, ww = r * sh - ph + i, q * sw - pw + j
                            if not (0 <= hh < h and 0 <= ww < wd):
                                continue
                            v = x[a, ch, hh, ww]
                            if best is None or (not math.isnan(best) and (math.isnan(v) or v > best)):
                                best, where = v, hh * wd + ww
                    y[a, ch, r, q], am[a, ch, r, q] = best, where
    return y, am


def max_pool2d_backward(dy, argmax, x_shape):
    """dx: each dy added at its window's argmax, windows visited in row-major order from +0."""
    dy = np.asarray(dy)
    n, c, h, wd = x_shape
    dx = np.zeros((n, c, h * wd), dtype=dy.dtype)
    for a in range(n):
        for ch in range(c):
            for r in range(dy.shape[2]):
                for q in range(dy.shape[3]):
                    dx[a, ch, argmax[a, ch, r, q]] += dy[a, ch, r, q]
    return dx.reshape(x_shape)


def avg_pool2d(x, kernel, stride=None, padding=0):
    """Mean over each window with zero padding counted: sum of the real inputs / (kh*kw)."""
    x = np.asarray(x, np.float64)
    n, c, h, wd = x.shape
    (kh, kw) = _pair(kernel)
    (sh, sw) = _pair(kernel if stride is None else stride)
    (ph, pw) = _pair(padding)
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh, ow = _out_size(h, kh, sh, ph), _out_size(wd, kw, sw, pw)
    y = np.zeros((n, c, oh, ow))
    for r in range(oh):
        for q in range(ow):
            y[:, :, r, q] = xp[:, :, r * sh:r * sh + kh, q * sw:q * sw + kw].sum(axis=(2, 3)) / (kh * kw)
    return y


def avg_pool2d_backward(dy, x_shape, kernel, stride=None, padding=0):
    dy = np.asarray(dy, np.float64)
    n, c, h, wd = x_shape
    (kh, kw) = _pair(kernel)
    (sh, sw) = _pair(kernel if stride is None else stride)
    (ph, pw) = _pair(padding)
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    for r in range(dy.shape[2]):
        for q in range(dy.shape[3]):
            dxp[:, :, r * sh:r * sh + kh, q * sw:q * sw + kw] += dy[:, :, r, q][:, :, None, None] / (kh * kw)
    return dxp[:, :, ph:ph + h, pw:pw + wd]


# --- batch norm -------------------------------------------------------------------------------------

def _channels(x):
    """x as a list over channels of flat float64 vectors (all N*H*W values of channel c)."""
    x = np.asarray(x, np.float64)
    return [np.moveaxis(x, 1, 0)[c].reshape(-1) for c in range(x.shape[1])]


def batch_norm_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    """(y, mean, invstd, new_running_mean, new_running_var), all float64; the inputs are not modified.
    Two-pass statistics per channel; biased variance normalises, unbiased updates the running var."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    mean, invstd = np.zeros(c), np.zeros(c)
    new_rm, new_rv = np.array(running_mean, np.float64), np.array(running_var, np.float64)
    y = np.zeros_like(x)
    for ch, v in enumerate(_channels(x)):
        m = v.size
        mu = math.fsum(v) / m
        var = math.fsum((v - mu) ** 2) / m
        mean[ch], invstd[ch] = mu, 1.0 / math.sqrt(var + eps)
        new_rm[ch] = (1 - momentum) * new_rm[ch] + momentum * mu
        new_rv[ch] = (1 - momentum) * new_rv[ch] + momentum * var * m / (m - 1)
        idx = (slice(None), ch) + (Ellipsis,)
        y[idx] = (x[idx] - mu) * invstd[ch] * gamma[ch] + beta[ch]
    return y, mean, invstd, new_rm, new_rv


def batch_norm_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    x = np.asarray(x, np.float64)
    y = np.zeros_like(x)
    for ch in range(x.shape[1]):
        idx = (slice(None), ch) + (Ellipsis,)
        y[idx] = (x[idx] - running_mean[ch]) / math.sqrt(running_var[ch] + eps) * gamma[ch] + beta[ch]
    return y


def batch_norm_backward(dy, x, gamma, eps=1e-5):
    """(dx, dgamma, dbeta) of the training forward, from the full per-channel Jacobian
    dy_j/dx_i = gamma*invstd*(delta_ij - 1/M - xhat_i*xhat_j/M) (an O(M^2) definition, small inputs only).
    Statistics are recomputed from x in float64."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    c = x.shape[1]
    dx = np.zeros_like(x)
    dgamma, dbeta = np.zeros(c), np.zeros(c)
    dxs = np.moveaxis(dx, 1, 0)
    for ch, (v, g) in enumerate(zip(_channels(x), _channels(dy))):
        m = v.size
        mu = math.fsum(v) / m
        inv = 1.0 / math.sqrt(math.fsum((v - mu) ** 2) / m + eps)
        xhat = (v - mu) * inv
        jac = gamma[ch] * inv * (np.eye(m) - 1.0 / m - np.outer(xhat, xhat) / m)   # jac[j, i] = dy_j/dx_i
        dxs[ch] = (g @ jac).reshape(dxs[ch].shape)
        dgamma[ch] = math.fsum(g * xhat)
        dbeta[ch] = math.fsum(g)
    return dx, dgamma, dbeta


# --- dropout: Philox4x64-10 in plain Python integers ------------------------------------------------

_M64 = 2**64 - 1
PHILOX_M = (0xD2E7470EE14C6C93, 0xCA5A826395121157)   # round multipliers (Random123)
PHILOX_W = (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)   # Weyl key increments


def philox4x64_10(ctr, key):
    """The Philox4x64-10 block function: 4 counter words, 2 key words (ints < 2**64) -> 4 output words.
    Round: (hi0, lo0) = M0*c0, (hi1, lo1) = M1*c2, c = (hi1^c1^k0, lo1, hi0^c3^k1, lo0); the key gets
    the Weyl increments before every round but the first."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & _M64, (k1 + PHILOX_W[1]) & _M64
        p0, p1 = PHILOX_M[0] * c0, PHILOX_M[1] * c2
        c0, c1, c2, c3 = (p1 >> 64) ^ c1 ^ k0, p1 & _M64, (p0 >> 64) ^ c3 ^ k1, p0 & _M64
    return c0, c1, c2, c3


def philox_raw(seed: int, counter: int, n: int) -> list[int]:
    """The first n words of np.random.Philox(key=seed, counter=counter).random_raw(): the counter is
    incremented (mod 2**256) BEFORE each block of 4 words, so word k is output k % 4 of the block at
    counter + 1 + k // 4; words are little-endian (word 0 least significant) for key and counter."""
    key = (seed & _M64, seed >> 64)
    out = []
    block = 0
    while len(out) < n:
        v = (counter + 1 + block) % 2**256
        out.extend(philox4x64_10(tuple((v >> (64 * i)) & _M64 for i in range(4)), key))
        block += 1
    return out[:n]


def dropout_mask(shape, p, seed, counter, dtype=np.float32):
    """Element k: 0 when (word_k >> 11) * 2**-53 < p, else 1/(1-p) rounded to dtype."""
    n = int(np.prod(shape))
    keep = np.asarray(1.0 / (1.0 - p)).astype(dtype)
    vals = [dtype(0) if (wd >> 11) * 2.0**-53 < p else keep for wd in philox_raw(seed, counter, n)]
    return np.array(vals, dtype=dtype).reshape(shape)
