"""The plain convolution: im2col, one GEMM, col2im. Slow on purpose and readable in one screen.

It is the oracle every NumPy algorithm is tested against (`conv2d_forward(..., algo="reference")`),
and the backward of a view algorithm (taps, phases) when the input holds inf. The whole batch is one
im2col matrix: memory N*C*kh*kw*OH*OW, fine for tests, not for training.
"""
from __future__ import annotations

import numpy as np

from gpunet.ops.geometry import Window2d


def applies(win: Window2d, cout: int, want_dx, dtype) -> bool:
    return True


def _taps(win: Window2d):
    """(i, j, rows, cols): kernel tap (i, j) reads padded input rows i + sh*oh and columns j + sw*ow."""
    for i in range(win.kh):
        for j in range(win.kw):
            yield (i, j, slice(i, i + win.sh * (win.oh - 1) + 1, win.sh),
                   slice(j, j + win.sw * (win.ow - 1) + 1, win.sw))


def _im2col(x, win: Window2d):
    """(C*kh*kw, N*OH*OW): row (c, i, j) is channel c of the zero-padded input under tap (i, j)."""
    xp = np.pad(x, ((0, 0), (0, 0), (win.ph, win.ph), (win.pw, win.pw)))
    cols = np.empty((win.c, win.kh, win.kw, win.n, win.oh, win.ow), dtype=x.dtype)
    for i, j, rows, colums in _taps(win):
        cols[:, i, j] = xp[:, :, rows, colums].transpose(1, 0, 2, 3)
    return cols.reshape(win.c * win.kh * win.kw, -1)


def forward(x, w, b, win: Window2d, relu: bool, y) -> None:
    """y = relu?(W (C_out, K) @ im2col(x) (K, N*P) + b), written into y (N, C_out, OH, OW)."""
    cout = w.shape[0]
    out = (w.reshape(cout, -1) @ _im2col(x, win)).reshape(cout, win.n, win.oh, win.ow).transpose(1, 0, 2, 3)
    if b is not None:
        out = out + b.reshape(1, cout, 1, 1)
    y[...] = np.maximum(out, 0) if relu else out        # NaN stays NaN


def backward(dy, ctx, want_dx: bool):
    """(dx, dw, db): dW = g @ im2col(x)^T, dx = col2im(W^T @ g), g = dy masked where y <= 0."""
    x, w, win, dt = ctx.x, ctx.w, ctx.win, dy.dtype
    cout = w.shape[0]
    g = dy if ctx.y is None else np.where(ctx.y > 0, dy, 0).astype(dt)   # an inf or NaN masked off stays out
    g2 = g.transpose(1, 0, 2, 3).reshape(cout, -1)                        # (C_out, N*P)
    dw = (g2 @ _im2col(x, win).T).reshape(w.shape)
    db = g2.sum(axis=1) if ctx.has_bias else None
    if not want_dx:
        return None, dw, db
    dcols = (w.reshape(cout, -1).T @ g2).reshape(win.c, win.kh, win.kw, win.n, win.oh, win.ow)
    dxp = np.zeros((win.n, win.c, win.h + 2 * win.ph, win.w + 2 * win.pw), dtype=dt)
    for i, j, rows, colums in _taps(win):     # col2im: each tap adds back onto the pixels it read
        dxp[:, :, rows, colums] += dcols[:, i, j].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(dxp[:, :, win.ph:win.ph + win.h, win.pw:win.pw + win.w]), dw, db
