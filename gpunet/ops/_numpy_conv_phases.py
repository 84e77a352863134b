"""Strided conv2d (stride > 1) on NumPy as GEMMs over shifted views of the input's stride phases:
no im2col (forward, dW), no per-phase im2col of dy (dx).

Polyphase split. With stride s, kernel tap i = a + s*mi (phase a < s) of output row oh reads padded
input row s*(oh + mi) + a, i.e. row oh + mi of the phase plane x_a[u] = xpad[s*u + a]. So a strided
convolution is the sum, over the (a, b) phases, of a stride-1 "valid" correlation of x_ab with the
sub-kernel W[:, :, a::s, b::s] (for 3x3 stride 2: 2x2, 2x1, 1x2 and 1x1 taps).

Layout (as in _numpy_conv_taps, images side by side). Each phase plane of a block of nb images is
copied into a buffer (C, Hq*pitch + slack): Hq = OH + mh - 1 rows, cell Wq = OW + mw - 1 columns per
image (mh, mw = the most taps a phase has per axis), pitch = nb*Wq, image n's phase pixel (u, v) at
u*pitch + n*Wq + v. Output (n, oh, ow) has the wide index m = oh*pitch + n*Wq + ow and sub-tap
(mi, l) reads the phase buffer at m + mi*pitch + l: a contiguous column range, a plain BLAS operand.

    forward  Y_wide (C_out, OH*pitch) = sum_phases sum_taps W[:, :, a+s*mi, b+s*l] @ P_ab[:, mi*pitch+l :]
    dW[:, :, a+s*mi, b+s*l] = g_wide (C_out, OH*pitch) @ P_ab[:, mi*pitch+l : +OH*pitch]^T
    dx    dP_ab (C, Hq*pitch2) = sum_taps W[:, :, a+s*mi, b+s*l]^T @ G[:, (T-mi)*pitch2 + L-l : +Hq*pitch2]

g_wide is the ReLU-masked dy in the output layout (zero in the Wq - OW columns that are not pixels);
G holds it again with T = mh-1 zero rows above and L = mw-1 zero columns left of each image (cell
Wq + L, pitch2 = nb*(Wq + L)), so dP_ab is the "full" correlation; dx is then interleaved back from
the phase planes. Each GEMM has K = C_out (dx) or a long K = OH*pitch (dW).

Measured on 2 cores against the im2col path (best of 10-12, same process): forward+backward 64->128
32x32 3x3 s2 142 -> 119 ms, 16->32 29.5 -> 20.9, 32->64 16x16 18.0 -> 13.4, 8->8 5x5 13.9 -> 7.3;
forward alone (one phase buffer, 1 MB blocks) 31.5 -> 23.2, 5.0 -> 3.1, 3.8 -> 3.1, 8->16 2.9 -> 1.9;
but 3->64 8.2 -> 13.4 fwd+bwd and 3.1 -> 4.1 forward (the GEMMs have only C rows or K = C = 3),
hence PHASE_MIN_CHANNELS. (A first forward with one buffer per phase and 4x smaller blocks lost to
im2col, 34.7 vs 32.6 ms: cache, not the K = C GEMMs.)
"""
from __future__ import annotations

import numpy as np

from gpunet.ops import _blas
from gpunet.ops._numpy_util import even_blocks, tap_range, workspace
from gpunet.ops.geometry import Window2d

# Target bytes of a block's largest buffer. Small blocks keep the accumulators in cache: 64->128 32x32
# s2 backward took 66 / 66 / 73 / 78 / 97 ms at 0.75 / 1.5 / 3 / 6 / 12 MB (best of 12, same process),
# its forward 27.4 / 23.2 / 22.4 / 28.8 / 31.2 at 0.5 / 1 / 2 / 4 / 8 MB; 16->32 and 32->64 were flat.
PHASE_BLOCK_BYTES = 1 << 20
# Below this many input channels dx's GEMM (C rows) gets too thin and im2col's scatter wins.
PHASE_MIN_CHANNELS = 8


def applies(win: Window2d) -> bool:
    """Stride > 1 on some axis, a kernel larger than 1x1, at least PHASE_MIN_CHANNELS input channels."""
    return (max(win.sh, win.sw) > 1 and win.kh * win.kw > 1 and win.c >= PHASE_MIN_CHANNELS)


class _Plan:
    def __init__(self, win: Window2d, cout: int, itemsize: int):
        self.win = win
        self.mh, self.mw = -(-win.kh // win.sh), -(-win.kw // win.sw)
        self.hq, self.wq = win.oh + self.mh - 1, win.ow + self.mw - 1
        self.t, self.l = self.mh - 1, self.mw - 1
        # (a, b, [(i, j, mi, l)]) for each phase with taps
        self.phases = []
        for a in range(min(win.sh, win.kh)):
            for b in range(min(win.sw, win.kw)):
                taps = [(i, j, (i - a) // win.sh, (j - b) // win.sw)
                        for i in range(a, win.kh, win.sh) for j in range(b, win.kw, win.sw)]
                self.phases.append((a, b, taps))
        # the largest per-block buffer: dx's padded g (C_out rows) or a phase plane / its dx (C rows)
        per_image = max(win.c, cout) * (self.hq + self.t) * (self.wq + self.l) * itemsize
        self.blocks = even_blocks(win.n, PHASE_BLOCK_BYTES // per_image)
        self.nb_max = max(n1 - n0 for n0, n1 in self.blocks)

    def covers_input(self) -> bool:
        """Whether the phase planes hold every input pixel (each pixel lies in exactly one phase)."""
        win = self.win
        rows = sum(max(0, hi - lo) for lo, hi, _ in (tap_range(a, win.h, self.hq, win.sh, win.ph)
                                                   for a in range(min(win.sh, win.kh))))
        cols = sum(max(0, hi - lo) for lo, hi, _ in (tap_range(b, win.w, self.wq, win.sw, win.pw)
                                                   for b in range(min(win.sw, win.kw))))
        return rows == win.h and cols == win.w

    def pitch(self, nb):
        return nb * self.wq

    def pitch2(self, nb):
        return nb * (self.wq + self.l)

    def in_range(self, a: int, b: int):
        """(u0, u1, r0), (v0, v1, q0): the phase-plane rows/columns that hold real input pixels, and
        the first input row/column they hold (every s-th after it)."""
        win = self.win
        return (tap_range(a, win.h, self.hq, win.sh, win.ph), tap_range(b, win.w, self.wq, win.sw, win.pw))


def _grid(buf, rows: int, pitch: int, nb: int, cell: int):
    """buf's first rows*pitch columns as (channels, rows, nb, cell)."""
    return buf[:, :rows * pitch].reshape(buf.shape[0], rows, nb, cell)


def _fill_phase(buf, plan: _Plan, nb: int, x_blk, a: int, b: int) -> None:
    """buf = phase (a, b) of the block x_blk (nb, C, H, W) in the forward layout, zeros elsewhere."""
    win, pitch = plan.win, plan.pitch(nb)
    buf[:, :plan.hq * pitch + plan.l + 1] = 0
    (u0, u1, r0), (v0, v1, q0) = plan.in_range(a, b)
    if u1 <= u0 or v1 <= v0:
        return
    dst = _grid(buf, plan.hq, pitch, nb, plan.wq)[:, u0:u1, :, v0:v1]
    src = x_blk[:, :, r0:r0 + (u1 - u0 - 1) * win.sh + 1:win.sh, q0:q0 + (v1 - v0 - 1) * win.sw + 1:win.sw]
    np.copyto(dst, src.transpose(1, 2, 0, 3))


def forward(x, w, b, win: Window2d, relu: bool, y) -> None:
    """y (N, C_out, OH, OW) = conv(x, w) + b, then ReLU when asked: per block, phase by phase (one
    buffer, refilled), one K = C GEMM per tap accumulated into the wide output."""
    cout, dt = int(w.shape[0]), y.dtype
    plan = _Plan(win, cout, dt.itemsize)
    taps = {(i, j): np.ascontiguousarray(w[:, :, i, j]) for _, _, ts in plan.phases for i, j, _, _ in ts}
    bias = None if b is None else b.reshape(cout, 1)
    ws = workspace()
    buf = ws.get("phase_x", (win.c, plan.hq * plan.pitch(plan.nb_max) + plan.l + 1), dt)
    acc_all = ws.get("phase_acc", (cout, win.oh * plan.pitch(plan.nb_max)), dt)
    tmp_all = ws.get("phase_tmp", (cout, win.oh * plan.pitch(plan.nb_max)), dt)
    for n0, n1 in plan.blocks:
        nb = n1 - n0
        pitch, m = plan.pitch(nb), win.oh * plan.pitch(nb)
        acc, tmp = acc_all[:, :m], tmp_all[:, :m]
        first = True
        for a, b_, ts in plan.phases:
            _fill_phase(buf, plan, nb, x[n0:n1], a, b_)
            for i, j, mi, l in ts:
                off = mi * pitch + l
                _blas.matmul_acc(taps[i, j], buf[:, off:off + m], acc, accumulate=not first, tmp=tmp)
                first = False
        if bias is not None:  # epilogue in cache, over the contiguous wide block
            np.add(acc, bias, out=acc)
        if relu:
            np.maximum(acc, 0, out=acc)  # NaN stays NaN, like PyTorch's relu
        np.copyto(y[n0:n1], acc.reshape(cout, win.oh, nb, plan.wq)[..., :win.ow].transpose(2, 0, 1, 3))


def backward(x, w, g_of, has_bias: bool, win: Window2d, dx, dw):
    """dx (None: skipped) and dw in place; db (float64) when there is a bias. g_of(n0, n1, out) writes
    the masked dy of images n0:n1 into out (C_out, nb, OH, OW)."""
    cout, dt = int(w.shape[0]), dw.dtype
    plan = _Plan(win, cout, dt.itemsize)
    db = np.zeros(cout, dtype=np.float64) if has_bias else None
    ws = workspace()
    cols = plan.hq * plan.pitch(plan.nb_max) + plan.l + 1
    cols2 = (plan.hq + plan.t) * plan.pitch2(plan.nb_max) + plan.l + 1
    xbuf = ws.get("phase_x", (win.c, cols), dt)
    gw_all = ws.get("phase_gw", (cout, win.oh * plan.pitch(plan.nb_max)), dt)
    gbuf = ws.get("phase_g", (cout, cols2), dt) if dx is not None else None
    acc_all = ws.get("phase_acc", (win.c, plan.hq * plan.pitch2(plan.nb_max)), dt)
    tmp_all = ws.get("phase_tmp", (win.c, plan.hq * plan.pitch2(plan.nb_max)), dt)
    dwtmp = np.empty((cout, win.c), dtype=dt)
    dws = {}
    wt = {(i, j): np.ascontiguousarray(w[:, :, i, j].T) for _, _, ts in plan.phases for i, j, _, _ in ts}
    if dx is not None and not plan.covers_input():
        dx[...] = 0   # pixels no output reads (a kernel narrower than the stride, a ragged edge) get 0
    for bi, (n0, n1) in enumerate(plan.blocks):
        nb = n1 - n0
        pitch, m = plan.pitch(nb), win.oh * plan.pitch(nb)
        gw = gw_all[:, :m]
        grid = gw.reshape(cout, win.oh, nb, plan.wq)
        grid[..., win.ow:] = 0
        g_of(n0, n1, grid[..., :win.ow].transpose(0, 2, 1, 3))
        if db is not None:
            db += gw.sum(axis=1)
        if dx is not None:
            pitch2 = plan.pitch2(nb)
            gbuf[:, :(plan.hq + plan.t) * pitch2 + plan.l + 1] = 0
            g2 = _grid(gbuf, plan.hq + plan.t, pitch2, nb, plan.wq + plan.l)
            np.copyto(g2[:, plan.t:plan.t + win.oh, :, plan.l:plan.l + win.ow], grid[..., :win.ow])
        for a, b, ts in plan.phases:
            _fill_phase(xbuf, plan, nb, x[n0:n1], a, b)
            for i, j, mi, l in ts:
                off = mi * pitch + l
                if (i, j) not in dws:
                    dws[i, j] = np.empty((cout, win.c), dtype=dt)
                _blas.matmul_acc(gw, xbuf[:, off:off + m].T, dws[i, j], accumulate=bi > 0, tmp=dwtmp)
            if dx is None:
                continue
            pitch2 = plan.pitch2(nb)
            m2 = plan.hq * pitch2
            acc, tmp = acc_all[:, :m2], tmp_all[:, :m2]
            for t, (i, j, mi, l) in enumerate(ts):
                off = (plan.t - mi) * pitch2 + (plan.l - l)
                _blas.matmul_acc(wt[i, j], gbuf[:, off:off + m2], acc, accumulate=t > 0, tmp=tmp)
            (u0, u1, r0), (v0, v1, q0) = plan.in_range(a, b)
            if u1 <= u0 or v1 <= v0:
                continue
            src = acc.reshape(win.c, plan.hq, nb, plan.wq + plan.l)[:, u0:u1, :, v0:v1]
            dst = dx[n0:n1, :, r0:r0 + (u1 - u0 - 1) * win.sh + 1:win.sh, q0:q0 + (v1 - v0 - 1) * win.sw + 1:win.sw]
            np.copyto(dst, src.transpose(2, 0, 1, 3))
    for (i, j), d in dws.items():   # every tap lies in exactly one phase
        dw[:, :, i, j] = d
    return db
