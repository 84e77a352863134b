"""conv2d forward and backward on NumPy as GEMMs over shifted views of one padded block: no im2col.
Serves stride-1 "same" convolutions (k = 2*pad + 1 on each axis) with enough input channels.

Layout. A block of nb images is copied into `xb` (C, Hp*pitch + slack): the images side by side in
one padded "row image" of Hp = H + 2*ph rows, image n's pixel (r, q) at row ph + r, column
pw + n*cell + q, with cell = W + pw (each image's right pad is the next one's left pad) and
pitch = nb*cell + pw; everything else is zero. Output pixel (n, oh, ow) gets the "wide" index
m = oh*pitch + n*cell + ow, and kernel tap (i, j) reads xb at m + i*pitch + j. A shifted copy
xcat (kw*C, Hp*pitch), xcat[j*C + c, q] = xb[c, q + j], puts a kernel row's kw taps side by side along
K, so kernel row i of the whole block is the column range xcat[:, i*pitch : i*pitch + M], M = H*pitch,
a plain BLAS operand (a row stride larger than the row is fine for BLAS):

    forward   Y_wide (C_out, M)  = sum_i W[:, :, i, :] (C_out, kw*C) @ xcat[:, i*pitch : +M]
    dx        dX_wide (C, M)     = sum_i Wflip[:, :, i, :] (C, kw*C_out) @ gcat[:, i*pitch : +M]
    dW[:, :, i, :] (C_out, kw*C) = g_wide (C_out, M) @ xcat[:, i*pitch : +M]^T

where gb holds the ReLU-masked dy in xb's layout (zero pads), gcat is its shifted copy, and
g_wide = gb[:, ph*pitch + pw :]: because the convolution is "same", g_wide is g at the wide indices
and zero at every other one, so the non-pixel wide positions add exactly 0 to dW. Wide outputs that
are not pixels (the pw pad columns after each image) are computed and dropped: cell / W more GEMM
work (1.03x at 32x32, 1.06x at 16x16, 1.14x for 14x14 with pad 2), paid back by a kw-fold copy in
place of im2col's kh*kw-fold one and by K = kw*C GEMMs that accumulate in cache. Measured on 2 cores,
forward+backward, in one process against the im2col path: 64->64 32x32 3x3 207 -> 147 ms,
128->128 16x16 133 -> 109 ms, 32->64 14x14 5x5 172 -> 120 ms (best of 12, a busy machine).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from gpunet.ops import _blas
from gpunet.ops._numpy_util import even_blocks, workspace
from gpunet.ops.geometry import Window2d

# Target bytes of the largest block buffer (the kw-fold shifted copy). Forward+backward of
# 64->64 32x32 on 2 cores: 136 / 131 / 123 / 125 ms at 1 / 2 / 3 / 4.5 MB; 16->16 32x32 and
# 128->128 16x16 agree within noise. Big enough to amortise the BLAS thread hand-off of each GEMM,
# small enough that the accumulator stays in cache across a kernel's rows.
TAP_BLOCK_BYTES = 3 << 20
# Below this many input channels the GEMMs get too thin (dx's has only C rows) and im2col wins:
# 3->64 32x32 took 23 ms by im2col and 29 by taps; 8->16 took 24 by im2col and 16 by taps.
TAP_MIN_CHANNELS = 8
# dW as ONE GEMM per block, (kh*C_out, span) @ (span, kw*C) against a kh-fold shifted copy of g, when
# kh*C_out is at most this; else one (C_out, m) @ (m, kw*C) GEMM per kernel row. The single GEMM reads
# xcat once instead of kh times, which pays while its rows are few: 16->16 32x32 fwd+bwd 20.4 -> 18.4 ms,
# 32->32 16x16 13.6 -> 12.8, 64->64 32x32 131 -> 125; 128->128 16x16 130 -> 153 and 32->64 5x5
# 135 -> 140 went the other way (best of 12, same process).
DW_SINGLE_GEMM_MAX_ROWS = 192


def applies(win: Window2d) -> bool:
    """Whether the tap path serves this geometry: stride 1, "same" padding, a kernel larger than 1x1
    (1x1 is already a copy-free GEMM) and at least TAP_MIN_CHANNELS input channels."""
    return (win.sh == win.sw == 1 and win.kh == 2 * win.ph + 1 and win.kw == 2 * win.pw + 1
            and win.kh * win.kw > 1 and win.c >= TAP_MIN_CHANNELS)


class _Plan:
    """Block geometry shared by forward and backward (see the module docstring)."""

    def __init__(self, win: Window2d, cout: int, itemsize: int):
        self.win = win
        self.hp = win.h + 2 * win.ph
        self.kh, self.kw = win.kh, win.kw
        self.cell = win.w + win.pw                    # one image's columns plus the pad after it
        per_image = win.kw * max(win.c, cout) * self.hp * self.cell * itemsize  # the shifted copy
        self.blocks = even_blocks(win.n, TAP_BLOCK_BYTES // per_image)
        self.nb_max = max(n1 - n0 for n0, n1 in self.blocks)

    def pitch(self, nb: int) -> int:
        return nb * self.cell + self.win.pw

    def wide(self, nb: int) -> int:
        """m: the wide outputs of nb images, OH rows of the pitch."""
        return self.win.oh * self.pitch(nb)

    def padded(self, name: str, channels: int, dtype):
        return workspace().get(name, (channels, self.hp * self.pitch(self.nb_max) + self.kw - 1), dtype)

    def images(self, a, nb: int, start: int = 0):
        """The pixels of a block laid out with nb images' pitch, pixel (0, 0) of image 0 at column
        `start` of a (channels, columns): a view (channels, nb, H, W)."""
        pitch, win = self.pitch(nb), self.win
        grid = a[:, start:start + win.h * pitch].reshape(a.shape[0], win.h, pitch)
        cells = grid[:, :, :nb * self.cell].reshape(a.shape[0], win.h, nb, self.cell)
        return cells[..., :win.w].transpose(0, 2, 1, 3)


def _fill(buf, plan: _Plan, nb: int, src) -> None:
    """buf = the zero-padded block: src (channels, nb, H, W) at rows ph.., columns pw + n*cell..;
    zeros everywhere else, the slack after the block included. src None: only the zeros (the
    caller then writes the pixels through plan.images)."""
    win, pitch = plan.win, plan.pitch(nb)
    used = plan.hp * pitch
    v = buf[:, :used].reshape(buf.shape[0], plan.hp, pitch)
    v[:, :win.ph] = 0
    v[:, win.ph + win.h:] = 0
    v[:, win.ph:win.ph + win.h, :win.pw] = 0
    cells = v[:, win.ph:win.ph + win.h, win.pw:].reshape(buf.shape[0], win.h, nb, plan.cell)
    cells[..., win.w:] = 0
    buf[:, used:] = 0
    if src is not None:
        np.copyto(plan.images(buf, nb, win.ph * pitch + win.pw), src)


def _shifted(name: str, buf, plan: _Plan, nb: int):
    """cat (kw*rows, span) with cat[j*rows + r, q] = buf[r, q + j]: the kw column taps side by side
    along K, one strided copy (each row a memcpy)."""
    rows, span = buf.shape[0], plan.hp * plan.pitch(nb)
    cat = workspace().get(name, (plan.kw, rows, span), buf.dtype)
    it = buf.strides[1]
    np.copyto(cat, as_strided(buf, (plan.kw, rows, span), (it, buf.strides[0], it), writeable=False))
    return cat.reshape(plan.kw * rows, span)


def _row_taps_gemm(weights, cat, offsets, m: int, acc, tmp) -> None:
    """acc (rows, m) = sum_i weights[i] @ cat[:, off_i : off_i + m], accumulated inside the GEMM."""
    for t, off in enumerate(offsets):
        _blas.matmul_acc(weights[t], cat[:, off:off + m], acc, accumulate=t > 0, tmp=tmp)


def forward(x, w, b, win: Window2d, relu: bool, y) -> None:
    """y (N, C_out, OH, OW) = conv(x, w) + b, then ReLU when asked."""
    cout, dt = int(w.shape[0]), y.dtype
    plan = _Plan(win, cout, dt.itemsize)
    # kernel row i as (C_out, kw*C) with columns (j, c), matching the shifted copy's rows
    rows = [np.ascontiguousarray(w[:, :, i, :].transpose(0, 2, 1)).reshape(cout, -1) for i in range(win.kh)]
    bias = None if b is None else b.reshape(cout, 1)
    xb = plan.padded("tap_x", win.c, dt)
    acc_all = workspace().get("tap_acc", (cout, plan.wide(plan.nb_max)), dt)
    tmp_all = workspace().get("tap_tmp", (cout, plan.wide(plan.nb_max)), dt)
    for n0, n1 in plan.blocks:
        nb = n1 - n0
        m, pitch = plan.wide(nb), plan.pitch(nb)
        _fill(xb, plan, nb, x[n0:n1].swapaxes(0, 1))
        xcat = _shifted("tap_xcat", xb, plan, nb)
        acc = acc_all[:, :m]
        _row_taps_gemm(rows, xcat, [i * pitch for i in range(win.kh)], m, acc, tmp_all[:, :m])
        # epilogue in cache over the contiguous wide block: a ufunc writing through the transposed
        # view ran 5x slower than this plus a copy (14 vs 3 ms for 64x64x32x32 float32)
        if bias is not None:
            np.add(acc, bias, out=acc)
        if relu:
            np.maximum(acc, 0, out=acc)  # NaN stays NaN, like PyTorch's relu
        np.copyto(y[n0:n1], plan.images(acc, nb).swapaxes(0, 1))


def backward(x, w, g_of, has_bias: bool, win: Window2d, dx, dw) -> np.ndarray | None:
    """dx and dw (C_out, C, kh, kw) in place (dx None: not wanted, its GEMMs are skipped); returns
    db (float64) when there is a bias.
    g_of(n0, n1, out) writes the masked dy of images n0:n1 into out (C_out, nb, OH, OW)."""
    cout, dt = int(w.shape[0]), dw.dtype
    plan = _Plan(win, cout, dt.itemsize)
    # flipped kernel row i' = kh-1-i as (C, kw*C_out) with columns (j', co), j' = kw-1-j
    flipped = None if dx is None else [
        np.ascontiguousarray(w[:, :, win.kh - 1 - i, ::-1].transpose(1, 2, 0)).reshape(win.c, -1)
        for i in range(win.kh)]
    dwr = np.empty((win.kh, cout, win.kw * win.c), dtype=dt)   # dW row by row, columns (j, c)
    one_gemm = win.kh * cout <= DW_SINGLE_GEMM_MAX_ROWS
    dwtmp = np.empty(dwr.shape[1:] if not one_gemm else (win.kh * cout, win.kw * win.c), dtype=dt)
    db = np.zeros(cout, dtype=np.float64) if has_bias else None
    xb = plan.padded("tap_x", win.c, dt)
    # gb lives `front` columns into its buffer: zeros there let the g3 copy below shift g by up to
    # (kh-1)*pitch; the zeros after the block are rewritten by _fill
    pitch_max = plan.pitch(plan.nb_max)
    g_full = workspace().get("tap_g", (cout, (plan.hp + 2 * win.ph) * pitch_max + win.pw + win.kw), dt)
    acc_all = workspace().get("tap_acc", (win.c, plan.wide(plan.nb_max)), dt)
    tmp_all = workspace().get("tap_tmp", (win.c, plan.wide(plan.nb_max)), dt)
    for bi, (n0, n1) in enumerate(plan.blocks):
        nb = n1 - n0
        m, pitch = plan.wide(nb), plan.pitch(nb)
        offsets = [i * pitch for i in range(win.kh)]
        front = win.ph * pitch
        g_full[:, :front] = 0
        gb = g_full[:, front:]
        _fill(gb, plan, nb, None)
        g_start = win.ph * pitch + win.pw
        g_of(n0, n1, plan.images(gb, nb, g_start))
        if db is not None:
            db += gb[:, :plan.hp * pitch].sum(axis=1)
        _fill(xb, plan, nb, x[n0:n1].swapaxes(0, 1))
        xcat = _shifted("tap_xcat", xb, plan, nb)
        if one_gemm:  # g3[i, co, q] = g_wide[co, q - i*pitch]
            span = plan.hp * pitch
            g3 = workspace().get("tap_g3", (win.kh, cout, span), dt)
            it = gb.strides[1]
            np.copyto(g3, as_strided(gb[:, g_start:], (win.kh, cout, span), (-pitch * it, gb.strides[0], it),
                                     writeable=False))
            _blas.matmul_acc(g3.reshape(win.kh * cout, span), xcat[:, :span].T, dwr.reshape(win.kh * cout, -1),
                             accumulate=bi > 0, tmp=dwtmp)
        else:
            g_wide = gb[:, g_start:g_start + m]
            for i, off in enumerate(offsets):  # (C_out, m) @ (m, kw*C): measured the faster way
                _blas.matmul_acc(g_wide, xcat[:, off:off + m].T, dwr[i], accumulate=bi > 0, tmp=dwtmp)
        if dx is None:
            continue
        gcat = _shifted("tap_xcat", gb, plan, nb)   # xcat is done with: reuse its buffer
        acc = acc_all[:, :m]
        _row_taps_gemm(flipped, gcat, offsets, m, acc, tmp_all[:, :m])
        np.copyto(dx[n0:n1], plan.images(acc, nb).swapaxes(0, 1))
    np.copyto(dw, dwr.reshape(win.kh, cout, win.kw, win.c).transpose(1, 3, 0, 2))
    return db
