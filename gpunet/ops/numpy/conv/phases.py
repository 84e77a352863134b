"""Strided conv2d (stride > 1) on NumPy as GEMMs over shifted views of the input's stride phases:
no im2col (forward, dW), no per-phase im2col of dy (dx).

Polyphase split. With stride s, kernel tap i = a + s*mi (phase a < s) of output row oh reads padded
input row s*(oh + mi) + a, i.e. row oh + mi of the phase plane x_a[u] = xpad[s*u + a]. So a strided
convolution is the sum, over the (a, b) phases, of a stride-1 "valid" correlation of x_ab with the
sub-kernel W[:, :, a::s, b::s] (for 3x3 stride 2: 2x2, 2x1, 1x2 and 1x1 taps).

Layout. The nb images of a block are stacked as in the taps algorithm: each phase plane is hq x wq
(hq = OH + mh - 1, wq = OW + mw - 1, mh, mw = the most taps a phase has per axis) and image n's plane
starts at column n*hq*wq of its row (pitch wq); rows (a*pb + b)*C + c of the buffer X' hold phase
(a, b) of channel c. Output (n, oh, ow) has the wide index m = (n*hq + oh)*wq + ow and phase tap
(mi, l) reads X' at m + mi*wq + l. Outputs with oh >= OH or ow >= OW are junk, computed and dropped;
no real output reads across a row or an image (the correlation is "valid" on the planes).

Taps grouped along K. A shifted copy xcat holds, for every phase (a, b) and column tap l it has, the
phase plane shifted left by l: row group (a, b, l), a-major. Kernel row mi reaches the phase rows
a < am[mi], so its taps are the first k_groups[mi] groups and the whole strided convolution is mh
GEMMs (for 3x3 stride 2: K = 6C and 3C, exactly the 9C multiply-adds per output):

    forward  Y_wide (C_out, M) = sum_mi Wg_mi (C_out, K_mi) @ xcat[:K_mi, mi*wq : mi*wq + M]
    dW       Wg_mi += g_wide (C_out, M) @ xcat[:K_mi, mi*wq : mi*wq + M]^T
    dx       dX'[(b, a < am[mi])] += Wt_mi,b (am*C, lw[b]*C_out) @ gcat[l' rows of b, (mh-1-mi)*wq : +span]

with M = nb*hq*wq - (mh - 1)*wq. G holds the masked dy with mh - 1 zero rows above and mw - 1 zero
columns left of each image (cell hq x wq, so a row's left zeros are the previous row's right
padding), g_wide = its columns from d = (mh-1)*wq + mw-1 (zero at the junk positions; for an x
holding inf, the backward uses the reference instead, as 0 * inf is NaN), and gcat its
mw-fold shifted copy (l' = mw - 1 - l); dX' is the "full" correlation on the phase planes, written
back to dx phase by phase.

Timings against im2col and the history of the layout: benchmarks/README.md.
"""
from __future__ import annotations

import numpy as np

from gpunet.ops.geometry import Window2d
from gpunet.ops.numpy import blas as _blas
from gpunet.ops.numpy.conv._common import view_backward
from gpunet.ops.numpy.util import bias_relu_into, even_blocks, tap_range, workspace

# Bytes of a block's largest buffer (the shifted copy, or dx's phase planes): accumulators in cache,
# GEMMs of a few thousand columns (benchmarks/README.md).
PHASE_BLOCK_BYTES = 2 << 20


def applies(win: Window2d, cout: int, want_dx, dtype) -> bool:
    """Stride > 1 on some axis and a kernel larger than 1x1."""
    return max(win.sh, win.sw) > 1 and win.kh * win.kw > 1


class _PhasePlan:
    """Block geometry and the tap grouping shared by forward and backward (module docstring)."""

    def __init__(self, win: Window2d, cout: int, itemsize: int):
        self.win = win
        self.mh, self.mw = -(-win.kh // win.sh), -(-win.kw // win.sw)
        self.hq, self.wq = win.oh + self.mh - 1, win.ow + self.mw - 1
        self.pa, self.pb = min(win.sh, win.kh), min(win.sw, win.kw)       # phases per axis
        # phase column b has the column taps l < lw[b]; kernel row mi reaches the phase rows a < am[mi]
        self.lw = [-(-(win.kw - b) // win.sw) for b in range(self.pb)]
        self.am = [min(self.pa, win.kh - win.sh * mi) for mi in range(self.mh)]
        # the shifted copy's row groups (C rows each), a-major so that kernel row mi uses a prefix
        self.groups = [(a, b, l) for a in range(self.pa) for b in range(self.pb) for l in range(self.lw[b])]
        self.k_groups = [am * sum(self.lw) for am in self.am]
        rows = max(len(self.groups) * win.c, self.pa * self.pb * win.c, self.mw * cout)
        self.blocks = even_blocks(win.n, PHASE_BLOCK_BYTES // (rows * self.hq * self.wq * itemsize))
        self.nb_max = max(n1 - n0 for n0, n1 in self.blocks)
        self.d = (self.mh - 1) * self.wq + self.mw - 1      # where g's wide index 0 sits in G

    def covers_input(self) -> bool:
        """Whether the phase planes hold every input pixel (each pixel lies in exactly one phase)."""
        win = self.win
        rows = sum(max(0, hi - lo) for lo, hi, _ in (tap_range(a, win.h, self.hq, win.sh, win.ph)
                                                   for a in range(self.pa)))
        cols = sum(max(0, hi - lo) for lo, hi, _ in (tap_range(b, win.w, self.wq, win.sw, win.pw)
                                                   for b in range(self.pb)))
        return rows == win.h and cols == win.w

    def span(self, nb: int) -> int:
        """Columns of nb stacked phase planes (hq rows of wq each per image)."""
        return nb * self.hq * self.wq

    def wide(self, nb: int) -> int:
        """m: the wide outputs, up to the last image's last real output row."""
        return self.span(nb) - (self.mh - 1) * self.wq

    def planes(self, a, nb: int, start: int = 0):
        """a[:, start:] as nb stacked planes: a view (rows, nb, hq, wq)."""
        return a[:, start:start + self.span(nb)].reshape(a.shape[0], nb, self.hq, self.wq)

    def pixels(self, a: int, b: int, nb: int, x_blk):
        """(plane slices, x_blk view (nb, C, ...)) of the input pixels phase (a, b) holds, or None."""
        win = self.win
        (u0, u1, r0), (v0, v1, q0) = (tap_range(a, win.h, self.hq, win.sh, win.ph),
                                      tap_range(b, win.w, self.wq, win.sw, win.pw))
        if u1 <= u0 or v1 <= v0:
            return None
        src = x_blk[:, :, r0:r0 + (u1 - u0 - 1) * win.sh + 1:win.sh, q0:q0 + (v1 - v0 - 1) * win.sw + 1:win.sw]
        return (slice(u0, u1), slice(v0, v1)), src

    def tap_weights(self, w, mi: int):
        """Kernel row mi against the shifted copy's first k_groups[mi] groups: (C_out, groups*C)."""
        return np.concatenate([w[:, :, a + self.win.sh * mi, b + self.win.sw * l]
                               for a, b, l in self.groups[:self.k_groups[mi]]], axis=1)


def _fill_phases(buf, plan: _PhasePlan, nb: int, x_blk) -> None:
    """buf rows (a*pb + b)*C + c = phase (a, b) of the block x_blk (nb, C, H, W), images stacked; zeros
    in the padding and in the mw - 1 columns of slack after the block."""
    c = plan.win.c
    buf[:, :plan.span(nb) + plan.mw - 1] = 0
    for a in range(plan.pa):
        for b in range(plan.pb):
            got = plan.pixels(a, b, nb, x_blk)
            if got is not None:
                (us, vs), src = got
                row = (a * plan.pb + b) * c
                np.copyto(plan.planes(buf[row:row + c], nb)[:, :, us, vs], src.swapaxes(0, 1))


def _tap_copy(buf, plan: _PhasePlan, nb: int):
    """xcat (groups*C, span): group (a, b, l) is phase (a, b) shifted left by l columns, so that kernel
    row mi of every phase is one GEMM over xcat[:k_groups[mi]*C, mi*wq : mi*wq + wide]."""
    c, span = plan.win.c, plan.span(nb)
    cat = workspace().get("phase_xcat", (len(plan.groups) * c, span), buf.dtype)
    for g, (a, b, l) in enumerate(plan.groups):
        row = (a * plan.pb + b) * c
        np.copyto(cat[g * c:(g + 1) * c], buf[row:row + c, l:l + span])
    return cat


def forward(x, w, b, win: Window2d, relu: bool, y) -> None:
    """y (N, C_out, OH, OW) = conv(x, w) + b, then ReLU when asked: per block, mh GEMMs (one per
    kernel row of the phase kernels) accumulated into the wide output."""
    cout, dt = int(w.shape[0]), y.dtype
    plan = _PhasePlan(win, cout, dt.itemsize)
    rows = [plan.tap_weights(w, mi) for mi in range(plan.mh)]
    bias4 = None if b is None else b.reshape(1, cout, 1, 1)
    ws = workspace()
    buf = ws.get("phase_x", (plan.pa * plan.pb * win.c, plan.span(plan.nb_max) + plan.mw - 1), dt)
    acc_all = ws.get("phase_acc", (cout, plan.span(plan.nb_max)), dt)
    tmp_all = ws.get("phase_tmp", (cout, plan.wide(plan.nb_max)), dt)
    for n0, n1 in plan.blocks:
        nb = n1 - n0
        m = plan.wide(nb)
        _fill_phases(buf, plan, nb, x[n0:n1])
        cat = _tap_copy(buf, plan, nb)
        for mi in range(plan.mh):
            k = plan.k_groups[mi] * win.c
            _blas.matmul_acc(rows[mi], cat[:k, mi * plan.wq:mi * plan.wq + m], acc_all[:, :m],
                             accumulate=mi > 0, tmp=tmp_all[:, :m])
        bias_relu_into(y[n0:n1], plan.planes(acc_all, nb)[:, :, :win.oh, :win.ow].swapaxes(0, 1), bias4, relu)


def backward(dy, ctx, want_dx: bool):
    """(dx, dw, db); dx None when not wanted (its GEMMs are skipped)."""
    return view_backward(_backward, dy, ctx, want_dx)


def _backward(x, w, g_of, has_bias: bool, win: Window2d, dx, dw):
    """dx (None: skipped) and dw in place; db (float64) when there is a bias. g_of(n0, n1, out) writes
    the masked dy of images n0:n1 into out (C_out, nb, OH, OW)."""
    cout, dt = int(w.shape[0]), dw.dtype
    plan = _PhasePlan(win, cout, dt.itemsize)
    c, wq, d = win.c, plan.wq, plan.d
    db = np.zeros(cout, dtype=np.float64) if has_bias else None
    ws = workspace()
    span_max = plan.span(plan.nb_max)
    xbuf = ws.get("phase_x", (plan.pa * plan.pb * c, span_max + plan.mw - 1), dt)
    g_all = ws.get("phase_g", (cout, span_max + 2 * d), dt)
    dwr = [np.empty((cout, k * c), dtype=dt) for k in plan.k_groups]
    dwtmp = np.empty((cout, plan.k_groups[0] * c), dtype=dt)
    if dx is not None:
        acc_all = ws.get("phase_acc", (plan.pa * plan.pb * c, span_max), dt)
        tmp_all = ws.get("phase_tmp", (plan.pa * plan.pb * c, span_max), dt)
        # per (mi, b): rows (a < am[mi], c) of phase column b against G's column taps l < lw[b], which
        # gcat holds at l' = mw-1-l: wt[(a, c), (l', co)] = w[co, c, a + sh*mi, b + sw*(mw-1-l')]
        wt = {(mi, b): np.concatenate([
            np.concatenate([w[:, :, a + win.sh * mi, b + win.sw * (plan.mw - 1 - lp)].T
                            for lp in range(plan.mw - plan.lw[b], plan.mw)], axis=1)
            for a in range(plan.am[mi])], axis=0)
            for mi in range(plan.mh) for b in range(plan.pb)}
        if not plan.covers_input():
            dx[...] = 0   # pixels no output reads (a kernel narrower than the stride, a ragged edge) get 0
    for bi, (n0, n1) in enumerate(plan.blocks):
        nb = n1 - n0
        m, span = plan.wide(nb), plan.span(nb)
        # G: g at wide index m + d, zero elsewhere; its first `wide` columns from d are g_wide for dW,
        # and for dx tap (mi, l) of output m' reads G[m' + (mh-1-mi)*wq + (mw-1-l)]
        g_all[:, :span + 2 * d] = 0
        g_of(n0, n1, plan.planes(g_all, nb, d)[:, :, :win.oh, :win.ow])
        g_wide = g_all[:, d:d + m]
        if db is not None:
            db += g_wide.sum(axis=1)
        _fill_phases(xbuf, plan, nb, x[n0:n1])
        cat = _tap_copy(xbuf, plan, nb)
        for mi in range(plan.mh):
            k = plan.k_groups[mi] * c
            _blas.matmul_acc(g_wide, cat[:k, mi * wq:mi * wq + m].T, dwr[mi], accumulate=bi > 0,
                             tmp=dwtmp[:, :k])
        if dx is None:
            continue
        gcat = workspace().get("phase_gcat", (plan.mw, cout, span + (plan.mh - 1) * wq), dt)
        for lp in range(plan.mw):
            np.copyto(gcat[lp], g_all[:, lp:lp + gcat.shape[2]])
        gcat = gcat.reshape(plan.mw * cout, -1)
        for mi in range(plan.mh):
            off = (plan.mh - 1 - mi) * wq
            for b in range(plan.pb):
                r0, r1 = b * plan.pa * c, (b * plan.pa + plan.am[mi]) * c
                _blas.matmul_acc(wt[mi, b], gcat[(plan.mw - plan.lw[b]) * cout:, off:off + span],
                                 acc_all[r0:r1, :span], accumulate=mi > 0, tmp=tmp_all[r0:r1, :span])
        for a in range(plan.pa):
            for b in range(plan.pb):
                got = plan.pixels(a, b, nb, dx[n0:n1])
                if got is not None:
                    (us, vs), dst = got
                    row = (b * plan.pa + a) * c
                    np.copyto(dst, plan.planes(acc_all[row:row + c], nb)[:, :, us, vs].swapaxes(0, 1))
    for mi in range(plan.mh):   # every tap lies in exactly one group of one kernel row
        for g, (a, b, l) in enumerate(plan.groups[:plan.k_groups[mi]]):
            dw[:, :, a + win.sh * mi, b + win.sw * l] = dwr[mi][:, g * c:(g + 1) * c]
    return db
