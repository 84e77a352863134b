"""conv2d (+ bias, + fused ReLU) forward and backward on NumPy: BLAS GEMMs, chosen per geometry.

Which path serves a convolution (measured choices; each path's module or constant says by how much):

    stride 1, "same" padding, C_in >= 8   -> _numpy_conv_taps: GEMMs over shifted views of one padded
                                             block, no im2col (forward and backward)
    stride > 1, C_in >= 8                 -> _numpy_conv_phases: GEMMs over the input's stride
                                             phases, no im2col (forward and backward)
    pointwise (1x1, stride 1, no padding) -> per-image GEMMs on the NCHW planes themselves
    thin inputs (K = C_in*kh*kw <= 32)    -> image-major im2col: y (and, without dx, dW) per image,
                                             no transposing copies
    other stride-1 "same" forwards with   -> _numpy_conv_taps with all taps in one K (one GEMM per
      2 <= C_in < 8                          block); their backward takes the path below
    anything else                         -> the channel-major im2col path described here

Layouts. The API is NCHW, weight (C_out, C_in, kh, kw). The batch is cut into blocks of nb images
whose im2col matrix fits in cache (`BLOCK_BYTES`). A block's im2col matrix is built channel-major,
cols[k, n*P + p] with k = (ci*kh + i)*kw + j (the weight's own flattening) and p = oh*OW + ow, by
ONE strided copy out of a zero-padded copy of the block (no per-pixel Python). Per block, one GEMM
each:

    forward   Y (C_out, nb*P)  = W (C_out, K) @ cols (K, nb*P)            then + b, ReLU, -> NCHW
    dW       += g (C_out, nb*P) @ cols^T (nb*P, K)
    dx        per stride phase (a, b), the pixels h = a + sh*u, w = b + sw*v:
              dx_ab (C_in, nb*U*V) = Wflip_ab (C_in, C_out*mh*mw) @ gcols_ab   (a gather, no atomics)
              where gcols_ab is the im2col of the padded g over the mh*mw taps that reach the phase;
              stride 1 is the single phase, the classic "convolution with the flipped kernel".
              When C_in is much smaller than C_out that GEMM would be very thin: then dcols = W^T @ g
              and its taps are added back onto dx one kernel tap at a time (a scatter).

with g the ReLU-masked dy (g = dy where y > 0 else 0: a NaN in dy never leaks through the mask)
held channel-major (C_out, nb*P). Loops run over blocks, stride phases and kernel taps only; every
loop body is a BLAS call or a whole-block NumPy copy. One GEMM per block (not one per image) keeps
the BLAS thread hand-offs few, which matters on a loaded machine; the copies stay on the calling
thread (they are memory-bound: a second thread did not make them faster, and it competes with the
BLAS threads). input_grad=False (the layer that sees the data) skips dx's work on every path.

Summation order is BLAS's (and differs between the paths), so float32 results differ from other
backends in the last bits; the float64 path is the same code and serves as the oracle for the CUDA
kernels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from gpunet.ops import _numpy_conv_phases as phases_path
from gpunet.ops import _numpy_conv_taps as taps
from gpunet.ops._numpy_util import (all_finite, even_blocks, parallel, relu_into, same_dtype, tap_range,
                                    workspace)
from gpunet.ops.geometry import Window2d, conv2d_geometry

# Target size of one im2col block. Smaller blocks stay in the last-level cache between the copy that
# builds them, the GEMM that reads them and the transposes around it, but every GEMM call is a
# hand-off to the BLAS threads, which costs a scheduler time slice when the machine is busy. Since
# the wide-input convolutions moved to the tap and phase paths, this path serves mostly thin inputs,
# whose GEMMs are memory-bound: fwd+bwd at 16 -> 4 MB, best of 11 in one process: 3->64 32x32
# 24.1 -> 21.6 ms, 1->32 28x28 5x5 20.0 -> 18.7, 6->16 14x14 5x5 17.8 -> 16.0, 3->16 and the 1x1
# stride-2 shortcut flat (2 MB: no better). A single image larger than this is processed alone.
BLOCK_BYTES = 4 << 20
# Up to this K = C_in*kh*kw the GEMMs are memory-bound (a thin input: the first layer), and the
# image-major im2col wins: the forward writes y in NCHW order and, when no dx is wanted, dW is a
# batch of per-image GEMMs on the masked dy as it lies, both without a transposing copy. Best of 12,
# channel-major -> per-image, 2 cores: 1->32 28x28 3x3 N128 forward 8.2 -> 6.1 ms, dW-only backward
# 10.0 -> 6.7; 3->16 32x32 N64 5.2 -> 2.7 and 7.0 -> 3.6; 1->32 5x5 9.2 -> 7.2 and 12.2 -> 8.3. With
# many output channels the per-image forward loses (3->64: 8.3 -> 15.7 ms; its dW-only backward still
# wins, 14.0 -> 12.4), hence the second bound, for the forward only.
PER_IMAGE_MAX_K = 32
PER_IMAGE_MAX_COUT_FORWARD = 32
# Image-major blocks (thin inputs): small, so both threads get several. Forward / dx-free backward,
# best of 12, at 0.25 / 0.5 / 1 / 4 MB: 1->32 28x28 3x3 N128 2.80/3.84, 2.65/3.55, 2.65/3.62, 4.18/5.56
# ms; 1->32 5x5 3.77/5.76, 3.35/4.56, 3.23/4.01, 4.23/4.93; 3->16 32x32 N64 2.23/3.47, 1.59/2.25,
# 1.41/1.70, 1.41/1.77.
PER_IMAGE_BLOCK_BYTES = 1 << 20
# Pointwise convolutions (1x1, stride 1, no padding) always take the image-major path, dx included:
# x[n] is its own im2col matrix, so no copy is left at all. Forward+backward, best of 15: 256->64
# 16x16 N64 25.5 -> 17.1 ms, 64->256 28.0 -> 24.0, 64->64 32x32 35.9 -> 24.9.


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
    return even_blocks(n, BLOCK_BYTES // max(1, bytes_per_image))


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
    np.copyto(dst[..., r0:r1, c0:c1], src[..., r0 - top:r1 - top, c0 - left:c1 - left])


def _padded_block(x, win: Window2d, n0: int, n1: int):
    """Images n0:n1 of x, zero-padded into a workspace buffer when the convolution pads."""
    src = x[n0:n1]
    if win.ph or win.pw:
        pad = workspace().get("conv_pad", (n1 - n0, win.c, win.h + 2 * win.ph, win.w + 2 * win.pw), x.dtype)
        _pad_into(pad, src, win.ph, win.pw)
        src = pad
    return src


def _cols(x, win: Window2d, n0: int, n1: int):
    """im2col of images n0:n1 as (K, nb*P): one strided copy into a workspace buffer (a view of x
    itself for a single image under a 1x1, stride-1, unpadded kernel)."""
    nb = n1 - n0
    k, p = win.c * win.kh * win.kw, win.oh * win.ow
    if nb == 1 and _pointwise(win):
        return x[n0].reshape(k, p)
    src = _padded_block(x, win, n0, n1)
    cols = workspace().get("conv_cols", (win.c, win.kh, win.kw, nb, win.oh, win.ow), x.dtype)
    s_n, s_c, s_h, s_w = src.strides
    np.copyto(cols, as_strided(src, cols.shape, (s_c, s_h, s_w, s_n, s_h * win.sh, s_w * win.sw),
                                writeable=False))
    return cols.reshape(k, nb * p)


def _view_path(win: Window2d):
    """The module serving this geometry with GEMMs over shifted views (no im2col): the stride-1
    "same" taps path, the strided phases path, or None."""
    return next((path for path in (taps, phases_path) if path.applies(win)), None)


def _pointwise(win: Window2d) -> bool:
    """1x1, stride 1, no padding: each image's (C, H*W) plane is already its im2col matrix."""
    return win.kh == win.kw == win.sh == win.sw == 1 and win.ph == win.pw == 0


def _cols_per_image(x, win: Window2d, n0: int, n1: int):
    """im2col of images n0:n1 image-major, (nb, K, P): each image's matrix on its own, so the GEMM
    W @ cols[n] lands in NCHW order and needs no transposing copy (x itself when pointwise)."""
    nb = n1 - n0
    if _pointwise(win):
        return x[n0:n1].reshape(nb, win.c, win.h * win.w)
    src = _padded_block(x, win, n0, n1)
    cols = workspace().get("conv_cols", (nb, win.c, win.kh, win.kw, win.oh, win.ow), x.dtype)
    s_n, s_c, s_h, s_w = src.strides
    np.copyto(cols, as_strided(src, cols.shape, (s_n, s_c, s_h, s_w, s_h * win.sh, s_w * win.sw),
                                writeable=False))
    return cols.reshape(nb, win.c * win.kh * win.kw, win.oh * win.ow)


def _to_nchw(src, out) -> None:
    """out (nb, C, P) = src (C, nb*P) viewed (C, nb, P) and transposed."""
    nb, c, p = out.shape
    if nb == 1:
        np.copyto(out[0], src)
    else:
        np.copyto(out, src.reshape(c, nb, p).transpose(1, 0, 2))


def conv2d_forward(x, w, b, stride, padding, relu: bool):
    dt = same_dtype("conv2d", x, weight=w, bias=b)
    win = conv2d_geometry(x.shape, w.shape, stride, padding)
    cout = int(w.shape[0])
    if b is not None and tuple(b.shape) != (cout,):
        raise ValueError(f"conv2d: expected bias of shape (C_out,)=({cout},), got {tuple(b.shape)}")
    k, p = win.c * win.kh * win.kw, win.oh * win.ow
    wm = np.ascontiguousarray(w).reshape(cout, k)
    bias = None if b is None else b.reshape(cout, 1)
    y = np.empty((win.n, cout, win.oh, win.ow), dtype=dt)
    per_image = k <= PER_IMAGE_MAX_K and cout <= PER_IMAGE_MAX_COUT_FORWARD
    path = _view_path(win) or (taps if not per_image and taps.applies_forward(win) else None)
    if path is not None:
        path.forward(x, w, b, win, relu, y)
        return y, ConvCtx(x, w, y if relu else None, b is not None, win)
    y3 = y.reshape(win.n, cout, p)
    if _pointwise(win) or per_image:  # y in place, NCHW

        def block(n0, n1):
            yb = y3[n0:n1]
            np.matmul(wm, _cols_per_image(x, win, n0, n1), out=yb)
            if bias is not None:
                np.add(yb, bias, out=yb)
            if relu:
                relu_into(yb, yb)
        _per_image_run(block, _image_blocks(win, k * p * dt.itemsize), win, y.size)
        return y, ConvCtx(x, w, y if relu else None, b is not None, win)
    for n0, n1 in _blocks(win.n, k * p * dt.itemsize):
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
    return y, ConvCtx(x, w, y if relu else None, b is not None, win)


def _relu_masked(dy, y, out, finite: bool) -> None:
    """out = dy where y > 0, else 0 (dy, y and out in one layout; y None: a plain copy). finite says
    whether dy holds only finite values: then dy * (y > 0), exact since dy*1 = dy and dy*0 = +-0;
    otherwise a masked copy, so that inf*0 = NaN cannot leak through the mask."""
    if y is None:
        np.copyto(out, dy)
    elif finite:
        np.multiply(dy, np.greater(y, 0), out=out)
    else:
        out[...] = 0
        np.copyto(out, dy, where=np.greater(y, 0))


def _masked_dy(dy, y, out) -> None:
    """out (C_out, nb, ...) = dy (nb, C_out, ...) with its first two axes swapped, zeroed where y <= 0
    when y is given (ReLU)."""
    _relu_masked(dy.swapaxes(0, 1), None if y is None else y.swapaxes(0, 1), out,
                 y is None or all_finite(dy))


def conv2d_backward(dy, ctx: ConvCtx, input_grad: bool = True):
    """(dx, dw, db); input_grad=False skips dx's GEMMs and copies and returns dx None."""
    if not isinstance(ctx, ConvCtx):
        raise TypeError(f"conv2d backward: ctx must come from NumpyOps.conv2d_forward, got {type(ctx).__name__}")
    x, w, win = ctx.x, ctx.w, ctx.win
    dt = same_dtype("conv2d backward", x, dy=dy)
    cout = int(w.shape[0])
    want = (win.n, cout, win.oh, win.ow)
    if tuple(dy.shape) != want:
        raise ValueError(f"conv2d backward: expected dy of shape {want}, got {tuple(dy.shape)}")
    k, p = win.c * win.kh * win.kw, win.oh * win.ow
    dy3 = dy.reshape(win.n, cout, p)
    y3 = None if ctx.y is None else ctx.y.reshape(win.n, cout, p)
    wm = np.ascontiguousarray(w).reshape(cout, k)
    path = _view_path(win)
    if path is not None:
        dx = np.empty(x.shape, dtype=dt) if input_grad else None
        dw = np.empty(w.shape, dtype=dt)

        finite = ctx.y is None or all_finite(dy)

        def g_of(n0, n1, out):
            """out (C_out, nb, OH, OW), a strided view into the path's padded layout, = masked dy.
            The mask is applied in dy's own contiguous layout and then copied: a ufunc writing
            through the transposed view runs one short row at a time (OW elements) and took 3.6 ms
            where this takes under 1 (128x32x14x14 float32)."""
            if ctx.y is None:
                np.copyto(out, dy[n0:n1].swapaxes(0, 1))
                return
            g = workspace().get("conv_gmask", dy[n0:n1].shape, dt)
            _relu_masked(dy[n0:n1], ctx.y[n0:n1], g, finite)
            np.copyto(out, g.swapaxes(0, 1))
        db = path.backward(x, w, g_of, ctx.has_bias, win, dx, dw)
        # The view paths also compute the dropped "wide" outputs, whose g is 0, so their dW adds
        # 0 * x over pixels that a tap reaches only from those outputs: with an inf in x that is a NaN
        # where the true sum is finite. Then (dW non-finite and x non-finite: checked on the small dW
        # first) the im2col path below, which sums over real outputs only, computes the gradients.
        if np.isfinite(dw).all() or all_finite(x):
            return dx, dw, (None if db is None else db.astype(dt))

    if _pointwise(win) or not input_grad and k <= PER_IMAGE_MAX_K:
        dx = np.empty(x.shape, dtype=dt) if input_grad else None
        dw, db = _backward_per_image(x, dy3, y3, win, wm, ctx.has_bias, dx)
        return dx, dw.reshape(w.shape), db

    gather = cout <= 2 * win.c  # else the gather's GEMM would be thin and its im2col huge
    if not input_grad:
        dx, per_image = None, k * p
    elif gather:
        phases = _dx_phases(w, win)
        dx = np.empty(x.shape, dtype=dt)
        per_image = max(k * p, cout * win.kh * win.kw * -(-win.h // win.sh) * -(-win.w // win.sw))
    else:
        dx = np.zeros(x.shape, dtype=dt)
        per_image = 2 * k * p
    dw = np.empty((cout, k), dtype=dt)
    # dW as (C_out, nb*P) @ (nb*P, K) or, transposed, (K, nb*P) @ (nb*P, C_out): OpenBLAS ran the second
    # 3-22% faster whenever K >= C_out (e.g. 2.07 vs 2.65 ms for K=288, C_out=32, 12544 pixels) and 1.8x
    # slower for K=9, C_out=32.
    wgrad_transposed = k >= cout
    tmp = np.empty((k, cout) if wgrad_transposed else (cout, k), dtype=dt)
    db = np.zeros(cout, dtype=np.float64) if ctx.has_bias else None

    for bi, (n0, n1) in enumerate(_blocks(win.n, per_image * dt.itemsize)):
        nb = n1 - n0
        g = workspace().get("conv_g", (cout, nb, p), dt)
        _masked_dy(dy3[n0:n1], None if y3 is None else y3[n0:n1], g)
        g2 = g.reshape(cout, nb * p)
        if db is not None:
            db += g2.sum(axis=1)
        cols = _cols(x, win, n0, n1)
        if wgrad_transposed:  # dW^T = cols @ g^T: the faster orientation when K >= C_out (measured)
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


def _image_blocks(win: Window2d, bytes_per_image: int):
    """Blocks for the image-major path: PER_IMAGE_BLOCK_BYTES of im2col each (a fixed size, so the
    block-ordered dW sums do not depend on the thread count), pointwise ones as large as im2col's."""
    budget = BLOCK_BYTES if _pointwise(win) else PER_IMAGE_BLOCK_BYTES
    return even_blocks(win.n, budget // max(1, bytes_per_image))


def _per_image_run(fn, blocks, win: Window2d, size: int) -> None:
    """fn(n0, n1) for each block of images. Thin inputs' per-image GEMMs are too small for OpenBLAS
    to thread, so the blocks are shared between threads instead (1->32 28x28 5x5 forward, N128:
    7.0 -> 4.0 ms, 3->16 32x32: 2.4 -> 1.75); pointwise GEMMs are large enough for BLAS's own."""
    def run(i0, i1):
        for n0, n1 in blocks[i0:i1]:
            fn(n0, n1)
    if _pointwise(win) or len(blocks) == 1:
        run(0, len(blocks))
    else:
        parallel(run, len(blocks), size)


def _backward_per_image(x, dy3, y3, win: Window2d, wm, has_bias: bool, dx):
    """dW (and db) as a batch of per-image GEMMs g[n] (C_out, P) @ cols[n]^T (P, K), g the masked dy
    in its own NCHW layout; dx (pointwise convolutions only; None: not wanted) = W^T @ g[n] per image,
    straight into NCHW."""
    cout, k = wm.shape
    dt = dy3.dtype
    p = win.oh * win.ow
    finite = y3 is None or all_finite(dy3)
    blocks = _image_blocks(win, k * p * dt.itemsize)
    parts = {}   # per block: (dW, db) partial sums, added in block order below (the same sums
                 # whatever the thread count)

    def block(n0, n1):
        g = workspace().get("conv_g", (n1 - n0, cout, p), dt)
        _relu_masked(dy3[n0:n1], None if y3 is None else y3[n0:n1], g, finite)
        # row sums by einsum: 3x faster than g.sum(axis=2) (0.17 vs 0.57 ms for (128, 32, 784))
        db = np.einsum("ncp->nc", g).sum(axis=0, dtype=np.float64) if has_bias else None
        dw = np.matmul(g, _cols_per_image(x, win, n0, n1).transpose(0, 2, 1)).sum(axis=0)
        if dx is not None:
            np.matmul(wm.T, g, out=dx[n0:n1].reshape(n1 - n0, win.c, p))
        parts[n0] = (dw, db)
    _per_image_run(block, blocks, win, dy3.size)
    dw, db = parts[blocks[0][0]]
    for n0, _ in blocks[1:]:
        dw += parts[n0][0]
        if has_bias:
            db += parts[n0][1]
    return dw, (None if db is None else db.astype(dt))


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
    _pad_into(gp, gblk, top, left)
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
