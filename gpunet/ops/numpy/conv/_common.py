"""What the conv algorithms share: the backward's context, zero padding, the ReLU mask of dy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpunet.arrays import all_finite
from gpunet.ops.geometry import Window2d
from gpunet.ops.numpy.util import workspace


@dataclass(frozen=True)
class ConvCtx:
    """What the backward needs: the inputs, the geometry, and y when ReLU was fused (its mask); `native`:
    the oneDNN forward's own ctx (its backward needs it), None after a NumPy forward."""
    x: Any
    w: Any
    y: Any
    has_bias: bool
    win: Window2d
    native: Any = None

    @property
    def relu(self) -> bool:
        return self.y is not None


def pointwise(win: Window2d) -> bool:
    """1x1, stride 1, no padding: each image's (C, H*W) plane is already its im2col matrix."""
    return win.kh == win.kw == win.sh == win.sw == 1 and win.ph == win.pw == 0


def pad_into(dst, src, top: int, left: int) -> None:
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


def padded_block(x, win: Window2d, n0: int, n1: int):
    """Images n0:n1 of x, zero-padded into a workspace buffer when the convolution pads."""
    src = x[n0:n1]
    if win.ph or win.pw:
        pad = workspace().get("conv_pad", (n1 - n0, win.c, win.h + 2 * win.ph, win.w + 2 * win.pw), x.dtype)
        pad_into(pad, src, win.ph, win.pw)
        src = pad
    return src


def relu_masked(dy, y, out, finite: bool) -> None:
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


def masked_dy_writer(dy, ctx: ConvCtx):
    """g_of(n0, n1, out): out (C_out, nb, OH, OW), a strided view into a view algorithm's padded layout,
    = the masked dy of images n0:n1. The mask is applied in dy's own contiguous layout and then copied
    (a ufunc writing through the transposed view runs one short row at a time: 3.6 vs < 1 ms)."""
    finite = ctx.y is None or all_finite(dy)

    def g_of(n0, n1, out):
        if ctx.y is None:
            np.copyto(out, dy[n0:n1].swapaxes(0, 1))
            return
        g = workspace().get("conv_gmask", dy[n0:n1].shape, dy.dtype)
        relu_masked(dy[n0:n1], ctx.y[n0:n1], g, finite)
        np.copyto(out, g.swapaxes(0, 1))
    return g_of


def view_backward(body, dy, ctx: ConvCtx, want_dx: bool):
    """(dx, dw, db) of a view algorithm (taps, phases) whose `body(x, w, g_of, has_bias, win, dx, dw)`
    fills dx/dw and returns db. Those algorithms also compute the dropped "wide" outputs, whose g is 0,
    so with an inf in x their dW adds 0 * inf = NaN where the true sum is finite: then (dW non-finite
    and x non-finite, checked on the small dW first) the reference, which sums over real outputs only,
    computes the gradients."""
    from gpunet.ops.numpy.conv import reference
    x, w, dt = ctx.x, ctx.w, dy.dtype
    dx = np.empty(x.shape, dtype=dt) if want_dx else None
    dw = np.empty(w.shape, dtype=dt)
    db = body(x, w, masked_dy_writer(dy, ctx), ctx.has_bias, ctx.win, dx, dw)
    if np.isfinite(dw).all() or all_finite(x):
        return dx, dw, (None if db is None else db.astype(dt))
    return reference.backward(dy, ctx, want_dx)
