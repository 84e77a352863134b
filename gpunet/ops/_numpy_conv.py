"""conv2d (+ bias, + fused ReLU) forward and backward on NumPy: im2col blocks and BLAS GEMMs.

Layouts. The API is NCHW, weight (C_out, C_in, kh, kw). Inside, an image block's im2col matrix is
built channel-major, `cols[k, n, p]` with k = (ci*kh + i)*kw + j the weight's own flattening and
p = oh*OW + ow, by ONE strided copy out of a zero-padded block of x (no per-pixel Python):

    forward  y[n]   = W (C_out, K) @ cols[:, n, :]                      batched GEMM, lands in NCHW
    dW             += g (C_out, nb*P) @ cols(K, nb*P)^T                 one GEMM per block
    dx (gather)     dx[n] = Wflip (C_in, C_out*kh*kw) @ gcols[:, n, :]  stride 1: im2col of padded g
    dx (scatter)    dcols = W^T @ g, then dx += dcols tap by tap        stride > 1, or C_out >> C_in

with g the ReLU-masked dy (g = dy where y > 0 else 0, so a NaN in dy never leaks through the mask)
held channel-major (C_out, N, P). Blocks of images bound the scratch memory (`BLOCK_BYTES`); the
loops run over blocks and kernel taps only, never over pixels, and every loop body is a BLAS call or
a whole-block NumPy copy.

Summation order is BLAS's, so float32 results differ from other backends in the last bits; the
float64 path is the same code and serves as the oracle for the CUDA kernels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from gpunet.ops._numpy_util import Workspace, same_dtype, tap_range, workspace
from gpunet.ops.geometry import Window2d, conv2d_geometry

# Target size of one im2col block: big enough that each GEMM is large, small enough to stay cache-
# and memory-friendly. A single image larger than this is processed alone.
BLOCK_BYTES = 32 << 20


@dataclass(frozen=True)
class ConvCtx:
    """What the backward needs: the inputs, the geometry, and y when ReLU was fused (its mask)."""
    x: Any
    w: Any
    y: Any
    has_bias: bool
    win: Window2d

    @property
    def relu(self) -> bool:
        return self.y is not None


def _blocks(n: int, bytes_per_image: int):
    """Split n images into nearly equal blocks of at most BLOCK_BYTES of scratch each."""
    per = max(1, min(n, BLOCK_BYTES // max(1, bytes_per_image)))
    count = -(-n // per)
    bounds = [round(k * n / count) for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _pad_into(dst, src, top: int, left: int) -> None:
    """dst[..., top + r, left + c] = src[..., r, c] where that lands inside dst; zero elsewhere.
    `top`/`left` may be negative (src is then cropped)."""
    hd, wd = dst.shape[-2:]
    hs, ws = src.shape[-2:]
    r0, r1 = max(0, top), min(hd, top + hs)
    c0, c1 = max(0, left), min(wd, left + ws)
    if r1 <= r0 or c1 <= c0:
        dst[...] = 0
        return
    dst[..., :r0, :] = 0
    dst[..., r1:, :] = 0
    dst[..., r0:r1, :c0] = 0
    dst[..., r0:r1, c1:] = 0
    dst[..., r0:r1, c0:c1] = src[..., r0 - top:r1 - top, c0 - left:c1 - left]


def _im2col(src, out, kh, kw, sh, sw, oh, ow) -> None:
    """out[c, i, j, n, a, b] = src[n, c, a*sh + i, b*sw + j] (src (nb, C, H', W'), any strides)."""
    s_n, s_c, s_h, s_w = src.strides
    view = as_strided(src, (src.shape[1], kh, kw, src.shape[0], oh, ow),
                      (s_c, s_h, s_w, s_n, s_h * sh, s_w * sw), writeable=False)
    np.copyto(out, view)


def _cols(x, win: Window2d, n0: int, n1: int, ws: Workspace, dtype):
    """im2col of images n0:n1 as (K, nb, P), from a workspace buffer."""
    nb = n1 - n0
    src = x[n0:n1]
    if win.ph or win.pw:
        pad = ws.get("conv_pad", (nb, win.c, win.h + 2 * win.ph, win.w + 2 * win.pw), dtype)
        _pad_into(pad, src, win.ph, win.pw)
        src = pad
    cols = ws.get("conv_cols", (win.c, win.kh, win.kw, nb, win.oh, win.ow), dtype)
    _im2col(src, cols, win.kh, win.kw, win.sh, win.sw, win.oh, win.ow)
    return cols.reshape(win.c * win.kh * win.kw, nb, win.oh * win.ow)


def _pointwise(win: Window2d) -> bool:
    """1x1 kernel, stride 1, no padding: x itself is the im2col matrix."""
    return win.kh == win.kw == win.sh == win.sw == 1 and win.ph == win.pw == 0


def conv2d_forward(x, w, b, stride, padding, relu: bool):
    dt = same_dtype("conv2d", x, weight=w, bias=b)
    win = conv2d_geometry(x.shape, w.shape, stride, padding)
    cout = int(w.shape[0])
    if b is not None and tuple(b.shape) != (cout,):
        raise ValueError(f"conv2d: expected bias of shape (C_out,)=({cout},), got {tuple(b.shape)}")
    ws = workspace()
    k = win.c * win.kh * win.kw
    p = win.oh * win.ow
    wm = np.ascontiguousarray(w).reshape(cout, k)
    bias = None if b is None else b.reshape(cout, 1)
    y = np.empty((win.n, cout, win.oh, win.ow), dtype=dt)
    y3 = y.reshape(win.n, cout, p)
    pointwise = _pointwise(win)
    for n0, n1 in _blocks(win.n, (win.c if pointwise else k) * p * dt.itemsize):
        src = x[n0:n1].reshape(n1 - n0, win.c, p) if pointwise else _cols(x, win, n0, n1, ws, dt).transpose(1, 0, 2)
        yb = y3[n0:n1]
        np.matmul(wm, src, out=yb)
        # epilogue while the block is in cache
        if bias is not None:
            np.add(yb, bias, out=yb)
        if relu:
            np.maximum(yb, 0, out=yb)  # NaN stays NaN, like PyTorch's relu
    return y, ConvCtx(x, w, y if relu else None, b is not None, win)


def _masked_dy(dy, y, out) -> None:
    """out (C_out, nb, P) = dy (nb, C_out, P) transposed, zeroed where y <= 0 when y is given (ReLU)."""
    dyt = dy.transpose(1, 0, 2)
    if y is None:
        np.copyto(out, dyt)
    elif np.isfinite(dy).all():  # dy * (y > 0): exact, since dy*1 = dy and dy*0 = +-0
        np.multiply(dyt, np.greater(y, 0).transpose(1, 0, 2), out=out)
    else:                        # inf*0 = NaN must not leak through the mask
        out[...] = 0
        np.copyto(out, dyt, where=np.greater(y, 0).transpose(1, 0, 2))


def conv2d_backward(dy, ctx: ConvCtx):
    if not isinstance(ctx, ConvCtx):
        raise TypeError(f"conv2d backward: ctx must come from NumpyOps.conv2d_forward, got {type(ctx).__name__}")
    x, w, win = ctx.x, ctx.w, ctx.win
    dt = same_dtype("conv2d backward", x, dy=dy)
    cout = int(w.shape[0])
    want = (win.n, cout, win.oh, win.ow)
    if tuple(dy.shape) != want:
        raise ValueError(f"conv2d backward: expected dy of shape {want}, got {tuple(dy.shape)}")
    ws = workspace()
    k = win.c * win.kh * win.kw
    p = win.oh * win.ow
    dy3 = dy.reshape(win.n, cout, p)
    y3 = None if ctx.y is None else ctx.y.reshape(win.n, cout, p)
    wm = np.ascontiguousarray(w).reshape(cout, k)

    gather = win.sh == win.sw == 1 and cout <= 2 * win.c
    if gather:  # flipped, channel-swapped weight: wf[ci, (co, i, j)] = w[co, ci, kh-1-i, kw-1-j]
        wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(win.c, cout * win.kh * win.kw)
        dx = np.empty(x.shape, dtype=dt)
        per_image = max(k * p, cout * win.kh * win.kw * win.h * win.w)
    else:
        dx = np.zeros(x.shape, dtype=dt)
        per_image = 2 * k * p
    dx3 = dx.reshape(win.n, win.c, win.h * win.w)
    dw = np.empty((cout, k), dtype=dt)
    tmp = np.empty((cout, k), dtype=dt)
    db = np.zeros(cout, dtype=np.float64) if ctx.has_bias else None

    for bi, (n0, n1) in enumerate(_blocks(win.n, per_image * dt.itemsize)):
        nb = n1 - n0
        g = ws.get("conv_g", (cout, nb, p), dt)
        _masked_dy(dy3[n0:n1], None if y3 is None else y3[n0:n1], g)
        g2 = g.reshape(cout, nb * p)
        if db is not None:
            db += g2.sum(axis=1)
        cols = _cols(x, win, n0, n1, ws, dt).reshape(k, nb * p)
        np.matmul(g2, cols.T, out=dw if bi == 0 else tmp)
        if bi:
            dw += tmp
        if gather:
            _dx_gather(g.reshape(cout, nb, win.oh, win.ow), wf, dx3[n0:n1], win, ws, dt)
        else:
            _dx_scatter(g2, wm, dx[n0:n1], win, ws, dt)
    return dx, dw.reshape(w.shape), (None if db is None else db.astype(dt))


def _dx_gather(gblk, wf, out, win: Window2d, ws: Workspace, dt) -> None:
    """Stride 1: dx[n] = wf @ im2col(g padded by k-1-p), i.e. a convolution with the flipped kernel."""
    cout, nb = gblk.shape[:2]
    hg, wg = win.h + win.kh - 1, win.w + win.kw - 1
    gp = ws.get("conv_gpad", (cout, nb, hg, wg), dt)
    _pad_into(gp, gblk, win.kh - 1 - win.ph, win.kw - 1 - win.pw)
    gcols = ws.get("conv_cols", (cout, win.kh, win.kw, nb, win.h, win.w), dt)
    s_c, s_n, s_h, s_w = gp.strides
    view = as_strided(gp, gcols.shape, (s_c, s_h, s_w, s_n, s_h, s_w), writeable=False)
    np.copyto(gcols, view)
    np.matmul(wf, gcols.reshape(cout * win.kh * win.kw, nb, win.h * win.w).transpose(1, 0, 2), out=out)


def _dx_scatter(gb, wm, out, win: Window2d, ws: Workspace, dt) -> None:
    """dcols = W^T @ g, then each kernel tap's slice of dcols is added onto the pixels it came from
    (out must be zero on entry). Taps that only see padding are skipped."""
    nb = out.shape[0]
    k = wm.shape[1]
    dcols = ws.get("conv_dcols", (k, nb * win.oh * win.ow), dt)
    np.matmul(wm.T, gb, out=dcols)
    d6 = dcols.reshape(win.c, win.kh, win.kw, nb, win.oh, win.ow)
    for i in range(win.kh):
        ohl, ohh, h0 = tap_range(i, win.h, win.oh, win.sh, win.ph)
        if ohh <= ohl:
            continue
        for j in range(win.kw):
            owl, owh, w0 = tap_range(j, win.w, win.ow, win.sw, win.pw)
            if owh <= owl:
                continue
            dst = out[:, :, h0:h0 + (ohh - ohl - 1) * win.sh + 1:win.sh, w0:w0 + (owh - owl - 1) * win.sw + 1:win.sw]
            np.add(dst, d6[:, i, j, :, ohl:ohh, owl:owh].transpose(1, 0, 2, 3), out=dst)
