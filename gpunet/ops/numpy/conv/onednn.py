"""conv2d on oneDNN (gpunet.onednn.conv): the table's entry for the oneDNN CPU engine.

Serves float32 when the oneDNN library loads (any geometry; float64 and everything else falls through
to the NumPy algorithms). The forward keeps oneDNN's own ctx (blocked weights, primitive plan) in
ConvCtx.native, and the backward needs it: a conv whose forward ran here runs its backward here (the
table's `conv2d_backward` sends it), so forward and backward stay on one engine. Summation order is
oneDNN's: deterministic run to run, not bitwise equal to the NumPy algorithms. See docs/onednn.md.
"""
from __future__ import annotations

import numpy as np


def available() -> bool:
    from gpunet import onednn
    return onednn.available()


def applies(win, cout: int, want_dx, dtype) -> bool:
    return np.dtype(dtype) == np.float32 and available()


def forward(x, w, b, win, relu: bool, y):
    """Fills y; returns oneDNN's ctx (ConvCtx.native) for the backward."""
    from gpunet.onednn import conv
    return conv.conv2d_forward(x, w, b, (win.sh, win.sw), (win.ph, win.pw), relu, out=y)[1]


def forward_in_layout(x, w, b, win, relu: bool, keep_layout: bool):
    """(y, native ctx) for a Blocked x or a caller that takes y in oneDNN's layout (keep_layout)."""
    from gpunet.onednn import conv
    return conv.conv2d_forward(x, w, b, (win.sh, win.sw), (win.ph, win.pw), relu, keep_layout=keep_layout)


def backward(dy, ctx, want_dx: bool):
    from gpunet.onednn import conv
    if ctx.native is None:
        raise TypeError("conv2d backward: algorithm 'onednn' needs a ctx from a oneDNN forward "
                        "(conv2d_forward with algo='onednn', or chosen by the oneDNN engine)")
    return conv.conv2d_backward(dy, ctx.native, want_dx)
