"""Max and average pooling on oneDNN, with the NumpyOps contract (gpunet.ops.interface).

Max pool. oneDNN's forward-training primitive writes a workspace: for every output, the index
t = i*kw + j of the chosen tap inside its kh x kw window (u8 for windows up to 256 taps, else s32),
laid out like dst. We keep dst and the workspace in plain NCHW and return gpunet's argmax cache (int32
flat index h*W + w inside the (n, c) input plane; one table lookup and one add per output) as an
`Argmax`: a read-only int32 array that also carries the workspace. The backward runs oneDNN's backward
primitive straight from that workspace; any other int32 argmax (a NumPy forward's, a copy, a view) is
turned back into a workspace first (a few index passes). So the cache stays in gpunet's format (a NumPy
backward can consume this forward's argmax, and the reverse) and the common case pays no conversion.
The workspace cannot go stale: the Argmax is read-only, and arrays derived from it (views, copies)
do not inherit the workspace.

Semantics. The contract: padding (-inf) never wins, ties go to the first maximum in row-major window
order, NaN propagates with argmax at the first NaN, an all -inf window outputs -inf with argmax at its
first real input. oneDNN keeps the first maximum on ties too (a strict `>`, tested), but starts each
window from the lowest finite float (-FLT_MAX), not -inf, and its max does not propagate NaN. So the
forward runs on oneDNN only when min(x) > -FLT_MAX -- one pass that is False for any NaN, -inf or
-FLT_MAX -- and otherwise raises Declined, and the caller (NumpyOps) runs its own path, whose rules are
the contract. The backward adds each window's dy
at its argmax (dx starts at +0); with overlapping windows oneDNN's order of those additions is its own,
so sums of several dy at one pixel may differ from the NumPy path's in the last bit. An argmax that
lies outside its window (not from a max-pool forward) is Declined too: NumpyOps' backward accepts any
in-plane index.

On a Blocked activation (gpunet.onednn.blocked) max pool runs oneDNN's jit kernels in that layout, and the
argmax cache is the opaque `Workspace` (oneDNN's workspace in its own layout), read only by the backward;
the NaN rule above applies the same way.

Average pool: oneDNN's pooling_avg_include_padding (count_include_pad=True: divisor kh*kw), forward
and backward; rounding may differ from the NumPy path's in the last bit (oneDNN may multiply by
1/(kh*kw) where NumPy divides).
"""
from __future__ import annotations

import numpy as np

from gpunet.onednn import _capi as C
from gpunet.onednn import engine as E
from gpunet.onednn.blocked import Blocked, Layout, layout, to_layout
from gpunet.onednn.engine import Declined, PrimitiveDesc, any_, cache, engine, f32, plain
from gpunet.ops.geometry import Window2d, pool2d_geometry

_LOWEST = np.finfo(np.float32).min
_WS_DTYPES = {C.dnnl_u8: np.uint8, C.dnnl_s32: np.int32}


def applies(x) -> bool:
    """True when oneDNN can serve the call: a float32 NumPy array (max pool also needs finite input
    above -FLT_MAX, checked inside, where it falls back to NumPy itself)."""
    return isinstance(x, np.ndarray) and x.dtype == np.float32


def _d2(a, b):
    d = C.dims_t()
    d[0], d[1] = a, b
    return d


class _Plan:
    def __init__(self, win: Window2d, alg: int, name: str):
        self.win = win
        self.x_shape, self.y_shape = win.in_shape, (win.n, win.c, win.oh, win.ow)
        self.what = (f"{name} (src {self.x_shape} dst {self.y_shape} f32, kernel {(win.kh, win.kw)}, "
                     f"stride {(win.sh, win.sw)}, padding {(win.ph, win.pw)})")
        self.x_md, self.y_md = plain(self.x_shape), plain(self.y_shape)
        geo = (_d2(win.sh, win.sw), _d2(win.kh, win.kw), _d2(0, 0), _d2(win.ph, win.pw), _d2(win.ph, win.pw))
        self.fwd = PrimitiveDesc("dnnl_pooling_forward_primitive_desc_create", "forward " + self.what,
                                 engine().engine, C.dnnl_forward_training, alg, self.x_md.h, self.y_md.h, *geo, None)
        self.bwd = PrimitiveDesc("dnnl_pooling_backward_primitive_desc_create", "backward " + self.what,
                                 engine().engine, alg, self.x_md.h, self.y_md.h, *geo, self.fwd.h, None)
        self.ws_md = self.ws_dtype = None
        if alg == C.dnnl_pooling_max:
            self.ws_md = self.fwd.md(C.dnnl_query_workspace_md)
            dt = self.ws_md.data_type()
            if dt not in _WS_DTYPES or self.ws_md.size() != np.prod(self.y_shape) * np.dtype(_WS_DTYPES[dt]).itemsize:
                raise C.OnednnError("dnnl_primitive_desc_query_md", C.dnnl_unimplemented,
                                    f"{self.what}: workspace of type {C.DATA_TYPE_NAMES.get(dt, dt)} and "
                                    f"{self.ws_md.size()} bytes is not one tap index per output")
            self.ws_dtype = _WS_DTYPES[dt]
            # the flat input index of each window's tap (0, 0), which may lie in the padding
            h0 = np.arange(win.oh, dtype=np.int32) * win.sh - win.ph
            w0 = np.arange(win.ow, dtype=np.int32) * win.sw - win.pw
            self.h0, self.w0 = h0[:, None], w0[None, :]
            self.origin = h0[:, None] * win.w + w0[None, :]
            taps = np.arange(win.kh * win.kw, dtype=np.int32)
            self.tap_offset = (taps // win.kw) * np.int32(win.w) + taps % win.kw   # tap t -> i*W + j


class Argmax(np.ndarray):
    """gpunet's int32 argmax (read-only) with the oneDNN workspace it was computed from; `workspace` is
    None on any array derived from it (a view, a copy, an ufunc result)."""

    def __array_finalize__(self, obj):
        self.workspace = None
        self.win = None


def _argmax_with_workspace(argmax: np.ndarray, ws: np.ndarray, win: Window2d) -> Argmax:
    out = argmax.view(Argmax)
    out.workspace, out.win = ws, win
    out.flags.writeable = False
    return out


def _plan(win: Window2d, alg: int, name: str) -> _Plan:
    return cache.get(("pool2d", win, alg), lambda: _Plan(win, alg, name))


def max_pool2d_forward(x, kernel, stride, padding):
    """(y, argmax int32): see the module docstring for the rules and when NumpyOps serves the call. For a
    Blocked x: (Blocked y, Workspace), oneDNN's jit kernels on x's layout."""
    if not isinstance(x, Blocked):
        x = f32("max_pool2d", "input", x)
    win = pool2d_geometry("max_pool2d", x.shape, kernel, stride, padding)
    values = x.buf.view(np.float32) if isinstance(x, Blocked) else x   # a blocked layout's padding holds zeros
    if not np.min(values) > _LOWEST:   # NaN, -inf or -FLT_MAX somewhere: oneDNN's rules differ there
        raise Declined("max_pool2d: NaN, -inf or -FLT_MAX in the input (oneDNN starts windows at -FLT_MAX "
                       "and does not propagate NaN)")
    if isinstance(x, Blocked):
        return _blocked_forward(_blocked_plan(win, x.layout), x)
    plan = _plan(win, C.dnnl_pooling_max, "max pooling")
    y = E.output(plan.y_shape)
    ws = E.output(plan.y_shape, plan.ws_dtype)
    plan.fwd.execute({C.DNNL_ARG_SRC: (plan.x_md, x), C.DNNL_ARG_DST: (plan.y_md, y),
                      C.DNNL_ARG_WORKSPACE: (plan.ws_md, ws)})
    # tap t = i*kw + j -> flat index origin + i*W + j
    argmax = E.output(plan.y_shape, np.int32)
    np.take(plan.tap_offset, ws, out=argmax)
    argmax += plan.origin
    return y, _argmax_with_workspace(argmax, ws, win)


def max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding):
    """dx: NCHW from an int32 argmax; a Blocked in the forward input's layout from a Workspace (dy, an array or
    a Blocked, is brought into the forward output's layout first)."""
    win = pool2d_geometry("max_pool2d", tuple(x_shape), kernel, stride, padding)
    want = (win.n, win.c, win.oh, win.ow)
    if tuple(dy.shape) != want:
        raise ValueError(f"max_pool2d backward: expected dy of shape {want}, got {tuple(dy.shape)}")
    if isinstance(argmax, Workspace):
        if argmax.plan.win != win:
            raise ValueError(f"max_pool2d backward: the workspace is of a pool over {argmax.plan.win.in_shape} with "
                             f"kernel {(argmax.plan.win.kh, argmax.plan.win.kw)}, not this call's")
        return _blocked_backward(argmax.plan, dy, argmax)
    if isinstance(dy, Blocked):
        dy = dy.to_plain()
    dy = f32("max_pool2d backward", "dy", dy)
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int32 or argmax.shape != dy.shape:
        raise Declined("max_pool2d backward: argmax is not an int32 array of dy's shape")
    plan = _plan(win, C.dnnl_pooling_max, "max pooling")
    if isinstance(argmax, Argmax) and argmax.workspace is not None and argmax.win == win:
        return _backward(plan, dy, argmax.workspace)   # this engine's own forward: no conversion
    row, col = np.divmod(argmax, np.int32(win.w))
    row -= plan.h0
    col -= plan.w0
    inside = (row >= 0) & (row < win.kh) & (col >= 0) & (col < win.kw) & (argmax >= 0) & (argmax < win.h * win.w)
    if not inside.all():
        raise Declined("max_pool2d backward: an argmax lies outside its window (no workspace can hold it)")
    row *= np.int32(win.kw)
    row += col
    return _backward(plan, dy, row.astype(plan.ws_dtype))


def _backward(plan: _Plan, dy, ws):
    dx = E.output(plan.x_shape)
    plan.bwd.execute({C.DNNL_ARG_DIFF_DST: (plan.y_md, dy), C.DNNL_ARG_WORKSPACE: (plan.ws_md, ws),
                      C.DNNL_ARG_DIFF_SRC: (plan.x_md, dx)})
    return dx


def avg_pool2d_forward(x, kernel, stride, padding):
    x = f32("avg_pool2d", "input", x)
    win = pool2d_geometry("avg_pool2d", x.shape, kernel, stride, padding)
    plan = _plan(win, C.dnnl_pooling_avg_include_padding, "average pooling")
    y = E.output(plan.y_shape)
    plan.fwd.execute({C.DNNL_ARG_SRC: (plan.x_md, x), C.DNNL_ARG_DST: (plan.y_md, y)})
    return y


def avg_pool2d_backward(dy, x_shape, kernel, stride, padding):
    dy = f32("avg_pool2d backward", "dy", dy)
    win = pool2d_geometry("avg_pool2d", tuple(x_shape), kernel, stride, padding)
    want = (win.n, win.c, win.oh, win.ow)
    if tuple(dy.shape) != want:
        raise ValueError(f"avg_pool2d backward: expected dy of shape {want}, got {tuple(dy.shape)}")
    plan = _plan(win, C.dnnl_pooling_avg_include_padding, "average pooling")
    dx = E.output(plan.x_shape)
    plan.bwd.execute({C.DNNL_ARG_DIFF_DST: (plan.y_md, dy), C.DNNL_ARG_DIFF_SRC: (plan.x_md, dx)})
    return dx


# --- max pool on a Blocked activation: oneDNN's jit kernels in the conv's layout -------------------------

class _BlockedPlan:
    """Max pooling of one window geometry over a source layout: dst and workspace in the layout oneDNN picks."""

    def __init__(self, win: Window2d, src: Layout):
        self.win, self.src = win, src
        y_shape = (win.n, win.c, win.oh, win.ow)
        what = (f"max pooling (src {win.in_shape} blocked, dst {y_shape} f32, kernel {(win.kh, win.kw)}, "
                f"stride {(win.sh, win.sw)}, padding {(win.ph, win.pw)})")
        geo = (_d2(win.sh, win.sw), _d2(win.kh, win.kw), _d2(0, 0), _d2(win.ph, win.pw), _d2(win.ph, win.pw))
        dst_any = any_(y_shape)   # held: the handle must outlive the call
        self.fwd = PrimitiveDesc("dnnl_pooling_forward_primitive_desc_create", "forward " + what, engine().engine,
                                 C.dnnl_forward_training, C.dnnl_pooling_max, src.md.h, dst_any.h, *geo, None)
        self.dst = layout(self.fwd.md(C.dnnl_query_dst_md), y_shape)
        self.bwd = PrimitiveDesc("dnnl_pooling_backward_primitive_desc_create", "backward " + what, engine().engine,
                                 C.dnnl_pooling_max, src.md.h, self.dst.md.h, *geo, self.fwd.h, None)
        self.ws_md = self.fwd.md(C.dnnl_query_workspace_md)


def _blocked_plan(win: Window2d, src: Layout) -> _BlockedPlan:
    return cache.get(("max_pool2d blocked", win, src), lambda: _BlockedPlan(win, src))


class Workspace:
    """The argmax cache of a max pool over a Blocked activation: oneDNN's workspace in its own layout. Only
    max_pool2d_backward reads it (gpunet's int32 argmax indexes NCHW planes; this one has none)."""

    __slots__ = ("buf", "plan")
    dtype = np.dtype(np.uint8)

    def __init__(self, buf: np.ndarray, plan: _BlockedPlan):
        self.buf, self.plan = buf, plan

    @property
    def shape(self) -> tuple:
        return self.plan.dst.shape

    def __array__(self, dtype=None, copy=None):
        raise TypeError("a oneDNN max-pool workspace is not gpunet's int32 argmax: only max_pool2d_backward "
                        "reads it")


def _blocked_forward(plan: _BlockedPlan, x: Blocked):
    y = Blocked.empty(plan.dst)
    ws = E.empty(plan.ws_md)
    plan.fwd.execute({C.DNNL_ARG_SRC: (plan.src.md, x.buf), C.DNNL_ARG_DST: (plan.dst.md, y.buf),
                      C.DNNL_ARG_WORKSPACE: (plan.ws_md, ws)})
    return y, Workspace(ws, plan)


def _blocked_backward(plan: _BlockedPlan, dy, ws: Workspace) -> Blocked:
    dyb = to_layout(dy if isinstance(dy, Blocked) else f32("max_pool2d backward", "dy", dy), plan.dst)
    dx = Blocked.empty(plan.src)
    plan.bwd.execute({C.DNNL_ARG_DIFF_DST: (plan.dst.md, dyb.buf), C.DNNL_ARG_WORKSPACE: (plan.ws_md, ws.buf),
                      C.DNNL_ARG_DIFF_SRC: (plan.src.md, dx.buf)})
    return dx
