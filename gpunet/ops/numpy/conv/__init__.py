"""conv2d (+ bias, + fused ReLU) on NumPy: the algorithm table, the one place where a path is picked.

Each algorithm is a module with `applies(win, cout, want_dx, dtype)` (can it compute this? want_dx is
None for the forward, else whether the backward wants dx; an engine without float64 says no to it),
`forward(x, w, b, win, relu, y)` (fills y) and `backward(dy, ctx, want_dx) -> (dx, dw, db)`. `choose` holds every measured preference;
`conv2d_forward/backward(..., algo=name)` force one (tests, benchmarks). Arguments were validated by the
facade (NumpyOps). Timings behind each rule: benchmarks/README.md, "NumPy convolution algorithms".
`engine` is the CPU engine NumpyOps runs ("numpy" or "onednn"): on "onednn" the table offers `onednn`
first (docs/onednn.md); a forward that ran on oneDNN takes its backward there too (ctx.native).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from gpunet.onednn.blocked import is_blocked, plain_of
from gpunet.ops.geometry import conv2d_geometry
from gpunet.ops.numpy.conv import im2col, onednn, per_image, phases, reference, taps, taps_thin
from gpunet.ops.numpy.conv._common import ConvCtx, pointwise

ALGORITHMS = {"onednn": onednn, "taps": taps, "phases": phases, "per_image": per_image, "taps_thin": taps_thin,
              "im2col": im2col}
ENGINES = ("numpy", "onednn")
VIEW_MIN_CHANNELS = 8     # taps/phases below this: dx's GEMM (C_in rows) too thin, im2col wins
THIN_MAX_K = 32           # K = C_in*kh*kw up to this: memory-bound GEMMs, per_image wins (backward without dx)
THIN_MAX_COUT = 32        # ... and its forward too, up to this many output channels
THIN_MIN_CHANNELS = 2     # taps_thin's forward gains nothing on one channel


def choose(win, cout: int, want_dx=None, dtype=np.float32, engine: str = "numpy") -> str:
    """The algorithm for this geometry: want_dx None for the forward, else the backward with/without dx.
    Each rule: benchmarks/README.md, "NumPy convolution algorithms" (oneDNN's: docs/onednn.md)."""
    dtype = np.dtype(dtype)
    # oneDNN serves every float32 geometry on its engine, thin inputs included (C_in 1 and 3: fwd 1.7-2.7x,
    # bwd 1.2-2.7x faster than the NumPy algorithms, docs/onednn.md "Thin inputs")
    if engine == "onednn" and onednn.applies(win, cout, want_dx, dtype):
        return "onednn"
    thin = win.c * win.kh * win.kw <= THIN_MAX_K
    if win.c >= VIEW_MIN_CHANNELS and taps.applies(win, cout, want_dx, dtype):
        return "taps"
    if win.c >= VIEW_MIN_CHANNELS and phases.applies(win, cout, want_dx, dtype):
        return "phases"
    if pointwise(win) or (thin and (cout <= THIN_MAX_COUT if want_dx is None else not want_dx)):
        return "per_image"
    if win.c >= THIN_MIN_CHANNELS and taps_thin.applies(win, cout, want_dx, dtype):
        return "taps_thin"
    return "im2col"


def _algorithm(name: str, win, cout: int, want_dx, dtype):
    if name == "reference":
        return reference
    module = ALGORITHMS.get(name)
    if module is None:
        raise ValueError(f"conv2d: unknown algorithm {name!r}; expected one of {[*ALGORITHMS, 'reference']}")
    if not module.applies(win, cout, want_dx, dtype):
        raise ValueError(f"conv2d: algorithm {name!r} does not serve this "
                         f"{'forward' if want_dx is None else 'backward'} ({win})")
    return module


def conv2d_forward(x, w, b, stride, padding, relu: bool, algo: str | None = None, engine: str = "numpy",
                   keep_layout: bool = False):
    """(y, ctx); algo None: `choose`'s pick for `engine`. x may be a Blocked activation, and with keep_layout
    y is one (oneDNN's layout) when the algorithm is `onednn`; any other algorithm takes and gives NCHW."""
    win = conv2d_geometry(x.shape, w.shape, stride, padding)
    cout = int(w.shape[0])
    name = algo or choose(win, cout, None, x.dtype, engine)
    module = _algorithm(name, win, cout, None, x.dtype)
    if name == "onednn" and (keep_layout or is_blocked(x)):
        y, native = module.forward_in_layout(x, w, b, win, bool(relu), keep_layout)
    else:
        x = plain_of(x)
        y = np.empty((win.n, cout, win.oh, win.ow), dtype=x.dtype)
        native = module.forward(x, w, b, win, bool(relu), y)   # None but for oneDNN's own ctx
    return y, ConvCtx(x, w, y if relu else None, b is not None, win, native)


def conv2d_backward(dy, ctx: ConvCtx, input_grad: bool = True, algo: str | None = None):
    """(dx, dw, db); input_grad=False skips dx's work and returns dx None. Not forced, the backward runs on
    its forward's engine: oneDNN after a oneDNN forward, else `choose`'s NumPy pick."""
    win, cout, want_dx = ctx.win, int(ctx.w.shape[0]), bool(input_grad)
    name = algo or ("onednn" if ctx.native is not None else choose(win, cout, want_dx, dy.dtype))
    module = _algorithm(name, win, cout, want_dx, dy.dtype)
    if name != "onednn":   # the NumPy algorithms read NCHW arrays
        dy, ctx = plain_of(dy), dataclasses.replace(ctx, x=plain_of(ctx.x), y=plain_of(ctx.y))
    return module.backward(dy, ctx, want_dx)
