"""Channel-major im2col: the general algorithm, for any geometry (the table's last entry).

The batch is cut into blocks of nb images whose im2col matrix fits in cache (`COLS_BLOCK_BYTES`). A
block's matrix is built channel-major, cols[k, n*P + p] with k = (ci*kh + i)*kw + j (the weight's own
flattening) and p = oh*OW + ow, by ONE strided copy out of a zero-padded copy of the block. Per block,
one GEMM each:

    forward   Y (C_out, nb*P)  = W (C_out, K) @ cols (K, nb*P)            then + b, ReLU, -> NCHW
    dW       += g (C_out, nb*P) @ cols^T (nb*P, K)
    dx        gather (C_out <= 2*C_in): per stride phase (a, b), the pixels h = a + sh*u, w = b + sw*v,
              dx_ab (C_in, nb*U*V) = Wflip_ab (C_in, C_out*mh*mw) @ gcols_ab, gcols_ab the im2col of the
              padded g over the mh*mw taps that reach the phase (stride 1: the flipped-kernel convolution);
              scatter (C_out > 2*C_in, where that GEMM would be thin): dcols = W^T @ g, added back onto
              dx one kernel tap at a time

with g the ReLU-masked dy held channel-major (C_out, nb*P). want_dx=False skips dx's work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from gpunet.arrays import all_finite, relu_into
from gpunet.ops.geometry import Window2d
from gpunet.ops.numpy.conv._common import pad_into, padded_block, pointwise, relu_masked
from gpunet.ops.numpy.util import even_blocks, tap_range, workspace

# Scratch bytes of one im2col block: in cache between the copy, the GEMM and the transposes, yet few
# BLAS hand-offs (benchmarks/README.md, "NumPy convolution algorithms").
COLS_BLOCK_BYTES = 4 << 20


def applies(win: Window2d, cout: int, want_dx, dtype) -> bool:
    return True


def _col_blocks(n: int, bytes_per_image: int):
    """Split n images into nearly equal blocks of at most COLS_BLOCK_BYTES of scratch each."""
    return even_blocks(n, COLS_BLOCK_BYTES // max(1, bytes_per_image))


def _cols(x, win: Window2d, n0: int, n1: int):
    """im2col of images n0:n1 as (K, nb*P): one strided copy into a workspace buffer (a view of x
    itself for a single image under a 1x1, stride-1, unpadded kernel)."""
    nb = n1 - n0
    k, p = win.c * win.kh * win.kw, win.oh * win.ow
    if nb == 1 and pointwise(win):
        return x[n0].reshape(k, p)
    src = padded_block(x, win, n0, n1)
    cols = workspace().get("conv_cols", (win.c, win.kh, win.kw, nb, win.oh, win.ow), x.dtype)
    s_n, s_c, s_h, s_w = src.strides
    np.copyto(cols, as_strided(src, cols.shape, (s_c, s_h, s_w, s_n, s_h * win.sh, s_w * win.sw),
                                writeable=False))
    return cols.reshape(k, nb * p)


def _to_nchw(src, out) -> None:
    """out (nb, C, P) = src (C, nb*P) viewed (C, nb, P) and transposed."""
    nb, c, p = out.shape
    if nb == 1:
        np.copyto(out[0], src)
    else:
        np.copyto(out, src.reshape(c, nb, p).transpose(1, 0, 2))


def forward(x, w, b, win: Window2d, relu: bool, y) -> None:
    cout, dt = int(w.shape[0]), y.dtype
    k, p = win.c * win.kh * win.kw, win.oh * win.ow
    wm = np.ascontiguousarray(w).reshape(cout, k)
    bias = None if b is None else b.reshape(cout, 1)
    y3 = y.reshape(win.n, cout, p)
    for n0, n1 in _col_blocks(win.n, k * p * dt.itemsize):
        nb = n1 - n0
        cols = _cols(x, win, n0, n1)
        yb = y3[n0] if nb == 1 else workspace().get("conv_y", (cout, nb * p), dt)
        np.matmul(wm, cols, out=yb)
        if bias is not None:  # epilogue while the block is in cache
            np.add(yb, bias, out=yb)
        if relu:
            relu_into(yb, yb)  # NaN stays NaN, like PyTorch's relu
        if nb > 1:
            _to_nchw(yb, y3[n0:n1])


def _masked_dy(dy, y, out) -> None:
    """out (C_out, nb, ...) = dy (nb, C_out, ...) with its first two axes swapped, zeroed where y <= 0
    when y is given (ReLU)."""
    relu_masked(dy.swapaxes(0, 1), None if y is None else y.swapaxes(0, 1), out, y is None or all_finite(dy))


def backward(dy, ctx, want_dx: bool):
    x, w, win = ctx.x, ctx.w, ctx.win
    dt = dy.dtype
    cout = int(w.shape[0])
    k, p = win.c * win.kh * win.kw, win.oh * win.ow
    dy3 = dy.reshape(win.n, cout, p)
    y3 = None if ctx.y is None else ctx.y.reshape(win.n, cout, p)
    wm = np.ascontiguousarray(w).reshape(cout, k)
    gather = cout <= 2 * win.c  # else the gather's GEMM would be thin and its im2col huge
    if not want_dx:
        dx, per_image = None, k * p
    elif gather:
        phases = _dx_phases(w, win)
        dx = np.empty(x.shape, dtype=dt)
        per_image = max(k * p, cout * win.kh * win.kw * -(-win.h // win.sh) * -(-win.w // win.sw))
    else:
        dx = np.zeros(x.shape, dtype=dt)
        per_image = 2 * k * p
    dw = np.empty((cout, k), dtype=dt)
    # dW as (C_out, nb*P) @ (nb*P, K) or, transposed, (K, nb*P) @ (nb*P, C_out): the second is the
    # faster orientation when K >= C_out (benchmarks/README.md)
    wgrad_transposed = k >= cout
    tmp = np.empty((k, cout) if wgrad_transposed else (cout, k), dtype=dt)
    db = np.zeros(cout, dtype=np.float64) if ctx.has_bias else None

    for bi, (n0, n1) in enumerate(_col_blocks(win.n, per_image * dt.itemsize)):
        nb = n1 - n0
        g = workspace().get("conv_g", (cout, nb, p), dt)
        _masked_dy(dy3[n0:n1], None if y3 is None else y3[n0:n1], g)
        g2 = g.reshape(cout, nb * p)
        if db is not None:
            db += g2.sum(axis=1)
        cols = _cols(x, win, n0, n1)
        if wgrad_transposed:  # dW^T = cols @ g^T
            np.matmul(cols, g2.T, out=tmp)
            if bi:
                dw += tmp.T
            else:
                np.copyto(dw, tmp.T)
        else:
            np.matmul(g2, cols.T, out=dw if bi == 0 else tmp)
            if bi:
                dw += tmp
        if dx is None:
            continue
        if gather:
            _dx_gather(g.reshape(cout, nb, win.oh, win.ow), phases, dx[n0:n1], win)
        else:
            _dx_scatter(g2, wm, dx[n0:n1], win)
    return dx, dw.reshape(w.shape), (None if db is None else db.astype(dt))


@dataclass(frozen=True)
class _Phase:
    """dx pixels h = a + sh*u, w = b + sw*v (u < hn, v < wn) and the taps that reach them: rows
    i = r + sh*m (m < mh), columns j = q + sw*l (l < mw). dx[u, v] = sum_{m, l} w[.., i, j] *
    g[u + eh - m, v + ew - l], computed as a correlation of g (padded by mh - 1 - eh on top,
    mw - 1 - ew on the left) with the flipped tap weights `wf` (C_in, C_out*mh*mw)."""
    a: int
    b: int
    hn: int
    wn: int
    mh: int
    mw: int
    top: int
    left: int
    wf: Any


def _dx_phases(w, win: Window2d):
    phases = []
    for a in range(min(win.sh, win.h)):
        r, eh = (a + win.ph) % win.sh, (a + win.ph) // win.sh
        rows = list(range(r, win.kh, win.sh))
        for b in range(min(win.sw, win.w)):
            q, ew = (b + win.pw) % win.sw, (b + win.pw) // win.sw
            cols = list(range(q, win.kw, win.sw))
            wf = None
            if rows and cols:  # flipped taps: wf[ci, (co, m', l')] = w[co, ci, rows[-1-m'], cols[-1-l']]
                sub = w[:, :, rows[::-1]][:, :, :, cols[::-1]]
                wf = np.ascontiguousarray(sub.transpose(1, 0, 2, 3)).reshape(win.c, -1)
            phases.append(_Phase(a, b, len(range(a, win.h, win.sh)), len(range(b, win.w, win.sw)),
                                 len(rows), len(cols), len(rows) - 1 - eh, len(cols) - 1 - ew, wf))
    return phases


def _dx_gather(gblk, phases, out, win: Window2d) -> None:
    """dx of one image block, phase by phase: pad g once (enough for every phase), then for each
    phase one strided im2col copy and one GEMM, stored into the phase's pixels."""
    ws = workspace()
    cout, nb = gblk.shape[:2]
    dt = gblk.dtype
    top = max([0] + [ph.top for ph in phases])
    left = max([0] + [ph.left for ph in phases])
    hg = max([top + win.oh] + [top - ph.top + ph.hn + ph.mh - 1 for ph in phases])
    wg = max([left + win.ow] + [left - ph.left + ph.wn + ph.mw - 1 for ph in phases])
    gp = ws.get("conv_gpad", (cout, nb, hg, wg), dt)
    pad_into(gp, gblk, top, left)
    s_c, s_n, s_h, s_w = gp.strides
    whole = len(phases) == 1
    for ph in phases:
        dst = out if whole else out[:, :, ph.a::win.sh, ph.b::win.sw]
        if ph.wf is None:  # no tap reaches these pixels
            dst[...] = 0
            continue
        gcols = ws.get("conv_cols", (cout, ph.mh, ph.mw, nb, ph.hn, ph.wn), dt)
        base = gp[:, :, top - ph.top:, left - ph.left:]
        np.copyto(gcols, as_strided(base, gcols.shape, (s_c, s_h, s_w, s_n, s_h, s_w), writeable=False))
        src = gcols.reshape(cout * ph.mh * ph.mw, nb * ph.hn * ph.wn)
        if whole and nb == 1:
            np.matmul(ph.wf, src, out=out[0].reshape(win.c, ph.hn * ph.wn))
            continue
        res = ws.get("conv_dxphase", (win.c, nb * ph.hn * ph.wn), dt)
        np.matmul(ph.wf, src, out=res)
        np.copyto(dst, res.reshape(win.c, nb, ph.hn, ph.wn).transpose(1, 0, 2, 3))


def _dx_scatter(gb, wm, out, win: Window2d) -> None:
    """dcols = W^T @ g, then each kernel tap's slice of dcols is added onto the pixels it came from
    (out must be zero on entry). Taps that only see padding are skipped."""
    nb = out.shape[0]
    k = wm.shape[1]
    dcols = workspace().get("conv_dcols", (k, nb * win.oh * win.ow), gb.dtype)
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
