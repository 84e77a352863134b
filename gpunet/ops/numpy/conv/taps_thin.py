"""The taps layout for thin inputs, forward only: all kh*kw taps in one K (a kh-fold copy of the
shifted block, K = kh*kw*C) and one GEMM per block, where per-row GEMMs of K = kw*C would be too thin."""
from __future__ import annotations

from gpunet.ops.geometry import Window2d
from gpunet.ops.numpy.conv import taps


def applies(win: Window2d, cout: int, want_dx, dtype) -> bool:
    return want_dx is None and taps.applies(win, cout, None, dtype)


def forward(x, w, b, win: Window2d, relu: bool, y) -> None:
    taps.forward(x, w, b, win, relu, y, full_k=True)


def backward(dy, ctx, want_dx: bool):
    raise NotImplementedError("taps_thin has no backward (the table sends thin backwards to im2col or per_image)")
