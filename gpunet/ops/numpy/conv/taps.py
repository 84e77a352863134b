"""conv2d forward and backward on NumPy as GEMMs over shifted views of one padded block: no im2col.
Serves stride-1 "same" convolutions (k = 2*pad + 1 on each axis); the table uses it from 8 input channels.

Layout. A block of nb images is copied into `xb` (C, pw + R*W + slack): each channel holds the nb
images one under the other, rows of W (pitch = W, no columns of padding), with ph zero rows before
each image and after the last (R = nb*(H + ph) + ph rows); image n's pixel (r, q) sits at column
pw + (ph + n*(H + ph) + r)*W + q, so each image's H*W pixels are one contiguous run, exactly as in
x: the copy in (and the copy of the output back) moves whole images, not rows of W. Output pixel
(n, oh, ow) gets the "wide" index m = (n*(H + ph) + oh)*W + ow, and kernel tap (i, j) reads xb at
m + i*W + j. The ph-row gaps give the vertical padding; the horizontal padding is made where the
taps are laid out. A shifted copy xcat (kw*C, R*W), xcat[j*C + c, q] = xb[c, q + j], puts a kernel
row's kw taps side by side along K, and holds 0 where tap j would cross an image's left or right
edge (column q serves output column q mod W; for j - pw < 0 the first pw - j columns, for j - pw > 0
the last j - pw: a few strided fills). Kernel row i of the whole block is then the column range
xcat[:, i*W : i*W + M], M = (nb*(H + ph) - ph)*W, a plain BLAS operand (a row stride larger than the
row is fine for BLAS):

    forward   Y_wide (C_out, M)  = sum_i W[:, :, i, :] (C_out, kw*C) @ xcat[:, i*W : +M]
    dx        dX_wide (C, M)     = sum_i Wflip[:, :, i, :] (C, kw*C_out) @ gcat[:, i*W : +M]
    dW[:, :, i, :] (C_out, kw*C) = g_wide (C_out, M) @ xcat[:, i*W : +M]^T

where gb holds the ReLU-masked dy in xb's layout (zero gaps), gcat is its shifted copy, and
g_wide = gb[:, pw + ph*W :]: because the convolution is "same", g_wide is g at the wide indices
and zero at every other one, so the non-pixel wide positions add exactly 0 to dW (for a finite x:
with an inf in x, the backward hands the gradients to the reference). Wide outputs that
are not pixels (the ph gap rows between images) are computed and dropped: (H + ph) / H more GEMM
work (1.03x at 32x32, 1.06x at 16x16, 1.14x for 14x14 with pad 2), paid back by a kw-fold copy in
place of im2col's kh*kw-fold one and by K = kw*C GEMMs that accumulate in cache. Timings against
im2col and the history of the layout: benchmarks/README.md.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from gpunet.ops.geometry import Window2d
from gpunet.ops.numpy import blas as _blas
from gpunet.ops.numpy.conv._common import view_backward
from gpunet.ops.numpy.util import bias_relu_into, even_blocks, workspace

# Bytes of the largest block buffer (the kw-fold shifted copy): the BLAS hand-off amortised, the
# accumulator in cache (benchmarks/README.md).
TAP_BLOCK_BYTES = 3 << 20
# dW as ONE GEMM per block against a kh-fold shifted copy of g while kh*C_out is at most this (it reads
# xcat once instead of kh times), else one GEMM per kernel row (benchmarks/README.md).
DW_SINGLE_GEMM_MAX_ROWS = 512

# Blocks of the full-K forward (taps_thin): about this many bytes of the kh-fold shifted copy.
THIN_BLOCK_BYTES = 2 << 20


def applies(win: Window2d, cout: int, want_dx, dtype) -> bool:
    """Stride 1, "same" padding (k = 2*pad + 1 on each axis), a kernel larger than 1x1."""
    return (win.sh == win.sw == 1 and win.kh == 2 * win.ph + 1 and win.kw == 2 * win.pw + 1
            and win.kh * win.kw > 1)


class _TapPlan:
    """Block geometry shared by forward and backward (see the module docstring)."""

    def __init__(self, win: Window2d, cout: int, itemsize: int, thin: bool = False):
        self.win = win
        self.kh, self.kw = win.kh, win.kw
        self.pitch = win.w                            # a row of the block is a row of an image
        self.stride = win.h + win.ph                  # rows from one image to the next
        self.origin = win.pw + win.ph * win.w         # column of image 0's pixel (0, 0)
        if thin:   # the kh-fold copy of the shifted block
            per_image, budget = win.kh * win.kw * win.c * self.stride * win.w * itemsize, THIN_BLOCK_BYTES
        else:      # the shifted copy
            per_image, budget = win.kw * max(win.c, cout) * self.stride * win.w * itemsize, TAP_BLOCK_BYTES
        self.blocks = even_blocks(win.n, budget // per_image)
        self.nb_max = max(n1 - n0 for n0, n1 in self.blocks)

    def rows(self, nb: int) -> int:
        """Rows of the padded block: ph zero rows before each image and after the last one."""
        return nb * self.stride + self.win.ph

    def span(self, nb: int) -> int:
        """Columns a shifted copy covers: every row of the padded block."""
        return self.rows(nb) * self.pitch

    def wide(self, nb: int) -> int:
        """m: the wide outputs of nb images, from image 0's first row to image nb-1's last."""
        return (nb * self.stride - self.win.ph) * self.pitch

    def cells(self, nb: int) -> int:
        """Columns of a wide buffer viewed image by image (wide(nb) plus the last image's ph gap rows)."""
        return nb * self.stride * self.pitch

    def padded(self, name: str, channels: int, dtype, front: int = 0):
        """A block buffer; `front` extra leading columns, and ph rows more at the end than a shifted
        copy reads, for dW's shifted g."""
        return workspace().get(name, (channels, front + self.span(self.nb_max) + self.win.ph * self.pitch
                                      + 2 * self.win.pw), dtype)

    def images(self, a, nb: int, start: int = 0):
        """The pixels of nb images in a block buffer whose image 0 pixel (0, 0) is at column `start`:
        a view (channels, nb, H, W), each image's H*W pixels contiguous."""
        cells = a[:, start:start + self.cells(nb)].reshape(a.shape[0], nb, self.stride, self.pitch)
        return cells[:, :, :self.win.h]


def _fill(buf, plan: _TapPlan, nb: int, src) -> None:
    """buf = the zero-padded block: src (channels, nb, H, W) at plan.origin, image n's rows from
    row ph + n*(H + ph); zeros in the gap rows, the slack before and after (to the end of buf). src
    None: only the zeros (the caller then writes the pixels through plan.images)."""
    win = plan.win
    buf[:, :plan.origin] = 0
    cells = buf[:, plan.origin:plan.origin + plan.cells(nb)].reshape(buf.shape[0], nb, plan.stride, plan.pitch)
    cells[:, :, win.h:] = 0
    buf[:, plan.origin + plan.cells(nb):] = 0
    if src is not None:
        np.copyto(plan.images(buf, nb, plan.origin), src)


def _shifted(name: str, buf, plan: _TapPlan, nb: int):
    """cat (kw*rows, span) with cat[j*rows + r, q] = buf[r, q + j], except that a tap never reaches
    across an image's left or right edge: column q serves output column q mod W, and where that plus
    the tap's offset j - pw falls outside the image, cat holds 0 (the zero padding the rows lack)."""
    rows, span, w = buf.shape[0], plan.span(nb), plan.pitch
    cat = workspace().get(name, (plan.kw, rows, span), buf.dtype)
    it = buf.strides[1]
    np.copyto(cat, as_strided(buf, (plan.kw, rows, span), (it, buf.strides[0], it), writeable=False))
    grid = cat.reshape(plan.kw, rows, plan.rows(nb), w)
    for j in range(plan.kw):
        dj = j - plan.win.pw
        for col in (range(min(-dj, w)) if dj < 0 else range(max(w - dj, 0), w)):
            grid[j, :, :, col] = 0    # one strided pass of rows*R elements
    return cat.reshape(plan.kw * rows, span)


def _row_taps_gemm(weights, cat, offsets, m: int, acc, tmp) -> None:
    """acc (rows, m) = sum_i weights[i] @ cat[:, off_i : off_i + m], accumulated inside the GEMM."""
    for t, off in enumerate(offsets):
        _blas.matmul_acc(weights[t], cat[:, off:off + m], acc, accumulate=t > 0, tmp=tmp)


def forward(x, w, b, win: Window2d, relu: bool, y, full_k: bool = False) -> None:
    """y (N, C_out, OH, OW) = conv(x, w) + b, then ReLU when asked. full_k: all kh*kw taps in one K,
    one GEMM per block (the taps_thin algorithm)."""
    cout, dt = int(w.shape[0]), y.dtype
    thin = full_k
    plan = _TapPlan(win, cout, dt.itemsize, thin)
    # kernel row i as (C_out, kw*C) with columns (j, c), matching the shifted copy's rows; thin: the
    # whole kernel as (C_out, kh*kw*C) with columns (i, j, c)
    rows = [np.ascontiguousarray(w[:, :, i, :].transpose(0, 2, 1)).reshape(cout, -1) for i in range(win.kh)]
    full = np.concatenate(rows, axis=1) if thin else None
    bias4 = None if b is None else b.reshape(1, cout, 1, 1)
    xb = plan.padded("tap_x", win.c, dt)
    acc_all = workspace().get("tap_acc", (cout, plan.cells(plan.nb_max)), dt)
    tmp_all = workspace().get("tap_tmp", (cout, plan.wide(plan.nb_max)), dt)
    offsets = [i * plan.pitch for i in range(win.kh)]
    for n0, n1 in plan.blocks:
        nb = n1 - n0
        m = plan.wide(nb)
        _fill(xb, plan, nb, x[n0:n1].swapaxes(0, 1))
        xcat = _shifted("tap_xcat", xb, plan, nb)
        acc = acc_all[:, :m]
        if thin:   # cat[i, (j, c), q] = xcat[(j, c), q + i*W]: K = kh*kw*C, one GEMM
            cat = workspace().get("tap_cat_full", (win.kh, xcat.shape[0], m), dt)
            it = xcat.strides[1]
            np.copyto(cat, as_strided(xcat, cat.shape, (plan.pitch * it, xcat.strides[0], it), writeable=False))
            _blas.matmul_acc(full, cat.reshape(-1, m), acc, accumulate=False)
        else:
            _row_taps_gemm(rows, xcat, offsets, m, acc, tmp_all[:, :m])
        # the epilogue writes y straight from the block: each image's pixels are one contiguous run
        # on both sides
        bias_relu_into(y[n0:n1], plan.images(acc_all, nb).swapaxes(0, 1), bias4, relu)


def backward(dy, ctx, want_dx: bool):
    """(dx, dw, db); dx None when not wanted (its GEMMs are skipped)."""
    return view_backward(_backward, dy, ctx, want_dx)


def _backward(x, w, g_of, has_bias: bool, win: Window2d, dx, dw) -> np.ndarray | None:
    """dx and dw (C_out, C, kh, kw) in place (dx None: not wanted, its GEMMs are skipped); returns
    db (float64) when there is a bias.
    g_of(n0, n1, out) writes the masked dy of images n0:n1 into out (C_out, nb, OH, OW)."""
    cout, dt = int(w.shape[0]), dw.dtype
    plan = _TapPlan(win, cout, dt.itemsize)
    # flipped kernel row i' = kh-1-i as (C, kw*C_out) with columns (j', co), j' = kw-1-j
    flipped = None if dx is None else [
        np.ascontiguousarray(w[:, :, win.kh - 1 - i, ::-1].transpose(1, 2, 0)).reshape(win.c, -1)
        for i in range(win.kh)]
    dwr = np.empty((win.kh, cout, win.kw * win.c), dtype=dt)   # dW row by row, columns (j, c)
    one_gemm = win.kh * cout <= DW_SINGLE_GEMM_MAX_ROWS
    dwtmp = np.empty(dwr.shape[1:] if not one_gemm else (win.kh * cout, win.kw * win.c), dtype=dt)
    db = np.zeros(cout, dtype=np.float64) if has_bias else None
    xb = plan.padded("tap_x", win.c, dt)
    # gb lives `front` columns into its buffer: zeros there let the g3 copy below shift g back by up
    # to (kh-1) rows; the zeros after the block are rewritten by _fill
    front = (win.kh - 1) * plan.pitch
    g_full = plan.padded("tap_g", cout, dt, front)
    g_full[:, :front] = 0
    gb = g_full[:, front:]
    acc_all = workspace().get("tap_acc", (win.c, plan.cells(plan.nb_max)), dt)
    tmp_all = workspace().get("tap_tmp", (win.c, plan.wide(plan.nb_max)), dt)
    offsets = [i * plan.pitch for i in range(win.kh)]
    g_start = plan.origin
    for bi, (n0, n1) in enumerate(plan.blocks):
        nb = n1 - n0
        m, span = plan.wide(nb), plan.span(nb)
        _fill(gb, plan, nb, None)
        g_of(n0, n1, plan.images(gb, nb, g_start))
        g_wide = gb[:, g_start:g_start + m]      # g at the wide indices, zero in the gap rows
        if db is not None:
            db += g_wide.sum(axis=1)
        _fill(xb, plan, nb, x[n0:n1].swapaxes(0, 1))
        xcat = _shifted("tap_xcat", xb, plan, nb)
        if one_gemm:  # g3[i, co, q] = g_wide[co, q - i*pitch]
            g3 = workspace().get("tap_g3", (win.kh, cout, span), dt)
            it = gb.strides[1]
            np.copyto(g3, as_strided(gb[:, g_start:], (win.kh, cout, span), (-plan.pitch * it, gb.strides[0], it),
                                     writeable=False))
            _blas.matmul_acc(g3.reshape(win.kh * cout, span), xcat[:, :span].T, dwr.reshape(win.kh * cout, -1),
                             accumulate=bi > 0, tmp=dwtmp)
        else:
            for i, off in enumerate(offsets):  # (C_out, m) @ (m, kw*C): measured the faster way
                _blas.matmul_acc(g_wide, xcat[:, off:off + m].T, dwr[i], accumulate=bi > 0, tmp=dwtmp)
        if dx is None:
            continue
        gcat = _shifted("tap_xcat", gb, plan, nb)   # xcat is done with: reuse its buffer
        acc = acc_all[:, :m]
        _row_taps_gemm(flipped, gcat, offsets, m, acc, tmp_all[:, :m])
        np.copyto(dx[n0:n1], plan.images(acc_all, nb).swapaxes(0, 1))
    np.copyto(dw, dwr.reshape(win.kh, cout, win.kw, win.c).transpose(1, 3, 0, 2))
    return db
