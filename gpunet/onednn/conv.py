"""conv2d forward (bias fused, ReLU as an eltwise post-op) and backward (data, weights, bias) on oneDNN.

Same contract as NumpyOps.conv2d_forward / conv2d_backward (gpunet.ops.interface): NCHW float32 in and
out, weight (C_out, C_in, kh, kw), zero padding, y = relu?(conv(x, w) + b), ctx opaque. Shapes are
validated by gpunet.ops.geometry first, so the errors are the NumPy path's.

How (what PyTorch's mkldnn path does): the primitives are created with format `any`, so oneDNN picks
its blocked layouts (channel blocks of 16 on AVX-512) and its direct jit kernels; x and w are
reordered into those layouts and y (dx, dW) back to NCHW (OIHW) on every call -- with plain `nchw`
descriptors oneDNN takes a gemm kernel and gains nothing over NumPy (the issue's feasibility check). A plan (the forward, backward-data and
backward-weights primitive descriptors and their reorders) is cached per geometry, bias and ReLU.

Weights are reordered per training step, not per primitive call: the forward keeps its blocked
weights in ctx, and the backward-data primitive reuses them when it asks for the same layout (on
AVX-512 it wants the transposed blocking, so that is one more reorder of w per step).
ReLU backward: g = dy where y > 0, else 0 (one binary pass, (y > 0) * dy, checked through dW; see
conv2d_backward: a NaN or inf in dy never leaks through the mask), as the NumPy path does; g then feeds both backward primitives. The bias gradient comes from the
backward-weights primitive (diff_bias).

oneDNN has no f64 convolution: float64 (and anything that is not float32) is refused with TypeError;
`applies(x, w)` says whether this engine serves a call, so a dispatcher can send the rest to NumPy.
Summation order is oneDNN's (its kernels are run-to-run deterministic for one thread count), so
results differ from the NumPy path's in the last bits.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpunet.arrays import all_finite, relu_grad
from gpunet.onednn import _capi as C
from gpunet.onednn import binary
from gpunet.onednn import engine as E
from gpunet.onednn.blocked import Blocked, layout, plain_layout, plain_of, to_layout
from gpunet.onednn.engine import PrimitiveDesc, Reorder, any_, cache, call, engine, f32, plain
from gpunet.ops.geometry import Window2d, conv2d_geometry


def applies(x, w) -> bool:
    """True when this engine can serve the convolution: float32 NumPy arrays (shapes are checked later)."""
    return all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in (x, w))


def _dims2(a, b):
    d = C.dims_t()
    d[0], d[1] = a, b
    return d


def _attr_relu(what: str):
    """A primitive attribute with one ReLU eltwise post-op (alpha = 0: max(x, 0)); the caller destroys it."""
    lib = C.load()
    post, attr = C.handle(), C.handle()
    call("dnnl_post_ops_create", what, ctypes.byref(post))
    try:
        call("dnnl_post_ops_append_eltwise", what, post, C.dnnl_eltwise_relu, 0.0, 0.0)
        call("dnnl_primitive_attr_create", what, ctypes.byref(attr))
        call("dnnl_primitive_attr_set_post_ops", what, attr, post)
    except BaseException:
        if attr:
            lib.dnnl_primitive_attr_destroy(attr)
        raise
    finally:
        lib.dnnl_post_ops_destroy(post)   # the attribute holds its own copy
    return attr


def forward_desc(src_shape, w_shape, dst_shape, stride, padding, bias: bool, relu: bool, what: str) -> PrimitiveDesc:
    """The forward-training convolution primitive descriptor (format `any`, ReLU as an eltwise post-op).
    Public so that tests can hand oneDNN shapes that geometry would reject, and see its error."""
    attr = _attr_relu(what) if relu else None
    try:
        src, wts, dst = any_(src_shape), any_(w_shape), any_(dst_shape)
        b = plain((w_shape[0],)) if bias else None
        return PrimitiveDesc("dnnl_convolution_forward_primitive_desc_create", what, engine().engine,
                             C.dnnl_forward_training, C.dnnl_convolution_direct, src.h, wts.h,
                             None if b is None else b.h, dst.h, _dims2(*stride), _dims2(0, 0),
                             _dims2(*padding), _dims2(*padding), attr)
    finally:
        if attr is not None:
            C.load().dnnl_primitive_attr_destroy(attr)


class _Plan:
    """The primitives of one convolution geometry: forward now, the backward ones on first use. Activations
    are described by interned Layouts (gpunet.onednn.blocked), weights by Reorders from plain OIHW."""

    def __init__(self, win: Window2d, cout: int, bias: bool, relu: bool):
        self.win, self.cout, self.bias, self.relu = win, cout, bias, relu
        self.x_shape = win.in_shape
        self.w_shape = (cout, win.c, win.kh, win.kw)
        self.y_shape = (win.n, cout, win.oh, win.ow)
        self.what = (f"convolution (src {self.x_shape} weights {self.w_shape} dst {self.y_shape} f32, "
                     f"stride {(win.sh, win.sw)}, padding {(win.ph, win.pw)}, bias={bias}, relu={relu})")
        self.w_md, self.b_md = plain(self.w_shape), plain((cout,))
        self.fwd = forward_desc(self.x_shape, self.w_shape, self.y_shape, (win.sh, win.sw), (win.ph, win.pw),
                                bias, relu, "forward " + self.what)
        self.src = layout(self.fwd.md(C.dnnl_query_src_md), self.x_shape)
        self.dst = layout(self.fwd.md(C.dnnl_query_dst_md), self.y_shape)
        self.fwd_w = Reorder(self.w_md, self.fwd.md(C.dnnl_query_weights_md), "forward weights " + self.what)
        self._bwd_w = self._bwd_d = None

    def _geom(self):
        win = self.win
        return _dims2(win.sh, win.sw), _dims2(0, 0), _dims2(win.ph, win.pw), _dims2(win.ph, win.pw)

    def bwd_weights(self):
        """(primitive, src layout, diff_dst layout, diff_weights -> OIHW reorder)."""
        if self._bwd_w is None:
            what = "backward weights " + self.what
            src, dw, dy = any_(self.x_shape), any_(self.w_shape), any_(self.y_shape)
            pd = PrimitiveDesc("dnnl_convolution_backward_weights_primitive_desc_create", what, engine().engine,
                               C.dnnl_convolution_direct, src.h, dw.h, self.b_md.h if self.bias else None, dy.h,
                               *self._geom(), self.fwd.h, None)
            self._bwd_w = (pd, layout(pd.md(C.dnnl_query_src_md), self.x_shape),
                           layout(pd.md(C.dnnl_query_diff_dst_md), self.y_shape),
                           Reorder(pd.md(C.dnnl_query_diff_weights_md), self.w_md, "diff_weights " + what))
        return self._bwd_w

    def bwd_data(self):
        """(primitive, OIHW -> weights reorder, diff_dst layout, diff_src layout)."""
        if self._bwd_d is None:
            what = "backward data " + self.what
            dx, w, dy = any_(self.x_shape), any_(self.w_shape), any_(self.y_shape)
            pd = PrimitiveDesc("dnnl_convolution_backward_data_primitive_desc_create", what, engine().engine,
                               C.dnnl_convolution_direct, dx.h, w.h, dy.h, *self._geom(), self.fwd.h, None)
            self._bwd_d = (pd, Reorder(self.w_md, pd.md(C.dnnl_query_weights_md), "weights " + what),
                           layout(pd.md(C.dnnl_query_diff_dst_md), self.y_shape),
                           layout(pd.md(C.dnnl_query_diff_src_md), self.x_shape))
        return self._bwd_d


def _plan(win: Window2d, cout: int, bias: bool, relu: bool) -> _Plan:
    return cache.get(("conv2d", win, cout, bias, relu), lambda: _Plan(win, cout, bias, relu))


@dataclass(frozen=True)
class ConvCtx:
    """What the backward needs: x as the forward got it (an NCHW array or a Blocked activation: dx takes
    the same form), w (OIHW), the blocked weights the forward used, y when ReLU was fused (its mask), and
    the plan."""
    x: Any
    w: Any
    w_blocked: Any
    y: Any
    has_bias: bool
    plan: _Plan


def _into_plain(result: Blocked, out) -> np.ndarray:
    """A result computed in its primitive's layout, as an NCHW array (written into `out` when given)."""
    if out is None:
        return result.to_plain()
    if result.layout.is_plain:
        np.copyto(out, result.to_plain())
    else:
        result.layout.reorder_to(plain_layout(result.shape))(result.buf, out)
    return out


def conv2d_forward(x, w, b, stride, padding, relu: bool, out=None, keep_layout: bool = False):
    """(y, ctx), y = relu?(conv(x, w) + b) (see the module docstring). x: a float32 NCHW array or a Blocked
    activation. y: NCHW float32 (written into `out` when given: a C-contiguous array of y's shape), or with
    keep_layout a Blocked in the layout oneDNN chose for it."""
    if not isinstance(x, Blocked):
        x = f32("conv2d", "input", x)
    w = f32("conv2d", "weight", w)
    win = conv2d_geometry(x.shape, w.shape, stride, padding)
    cout = int(w.shape[0])
    if b is not None:
        b = f32("conv2d", "bias", b)
        if tuple(b.shape) != (cout,):
            raise ValueError(f"conv2d: expected bias of shape (C_out,)=({cout},), got {tuple(b.shape)}")
    relu = bool(relu)
    plan = _plan(win, cout, b is not None, relu)
    keep_layout = keep_layout and plan.dst.dense   # a padded channel block goes back to NCHW (blocked.Layout)
    xb, wb = to_layout(x, plan.src), plan.fwd_w(w)
    direct = plan.dst.is_plain and out is not None and not keep_layout   # oneDNN writes NCHW: straight into out
    yb = to_layout(out, plan.dst) if direct else Blocked.empty(plan.dst)
    args = {C.DNNL_ARG_SRC: (plan.src.md, xb.buf), C.DNNL_ARG_WEIGHTS: (plan.fwd_w.dst, wb),
            C.DNNL_ARG_DST: (plan.dst.md, yb.buf)}
    if b is not None:
        args[C.DNNL_ARG_BIAS] = (plan.b_md, b)
    plan.fwd.execute(args)
    y = yb if keep_layout else out if direct else _into_plain(yb, out)
    return y, ConvCtx(x, w, wb, y if relu else None, b is not None, plan)


def _relu_mask(dy, y):
    """(y > 0) * dy in one binary pass (in y's form: an array or a Blocked): exact for a finite dy (dy*1 = dy,
    dy*0 = +-0); a non-finite dy behind the mask would give 0*inf = NaN there, which conv2d_backward detects
    and redoes exactly."""
    zeros = np.zeros(y.shape[1], np.float32)
    if isinstance(y, Blocked):
        return binary.run(y, "gt", zeros, [("mul", to_layout(dy, y.layout))])
    return binary.run(y, "gt", zeros, [("mul", plain_of(dy))])


def _exact_relu_mask(dy, y):
    g = relu_grad(plain_of(dy), plain_of(y))
    return to_layout(g, y.layout) if isinstance(y, Blocked) else g


def _weights_grad(plan, x, g):
    """(dw, db, gw): the gradients from the masked gradient g, and g in backward-weights' layout (a Blocked,
    which backward-data reuses when it wants the same layout)."""
    pd, src, diff_dst, from_dw = plan.bwd_weights()
    gw = to_layout(g, diff_dst)
    dw = E.output(plan.w_shape)
    dwb = dw if from_dw.same else E.empty(from_dw.src)
    args = {C.DNNL_ARG_SRC: (src.md, to_layout(x, src).buf), C.DNNL_ARG_DIFF_DST: (diff_dst.md, gw.buf),
            C.DNNL_ARG_DIFF_WEIGHTS: (from_dw.src, dwb)}
    db = None
    if plan.bias:
        db = E.output(plan.cout)
        args[C.DNNL_ARG_DIFF_BIAS] = (plan.b_md, db)
    pd.execute(args)
    if not from_dw.same:
        from_dw(dwb, dw)
    return dw, db, gw


def conv2d_backward(dy, ctx: ConvCtx, input_grad: bool = True):
    """(dx, dw, db): db None without bias, dx None when input_grad is False (no backward-data work). dy: an
    NCHW array or a Blocked; dx: a Blocked in backward-data's layout when the forward's x was a Blocked,
    else an NCHW array.

    With ReLU fused, g = (y > 0) * dy comes from one binary pass. Every element of g reaches dW (each
    output window holds at least one real input), so a NaN or inf in g makes dW non-finite: only then
    (a non-finite dy; or a finite one whose dW overflows) is g rebuilt exactly with
    gpunet.arrays.relu_grad (dy where y > 0, else 0: NaN behind the mask never leaks) and dW redone."""
    if not isinstance(ctx, ConvCtx):
        raise TypeError(f"conv2d backward: ctx must come from gpunet.onednn.conv.conv2d_forward, got {type(ctx).__name__}")
    plan = ctx.plan
    if not isinstance(dy, Blocked):
        dy = f32("conv2d backward", "dy", dy)
    if tuple(dy.shape) != plan.y_shape:
        raise ValueError(f"conv2d backward: expected dy of shape {plan.y_shape}, got {tuple(dy.shape)}")
    g = dy if ctx.y is None else _relu_mask(dy, ctx.y)
    dw, db, gw = _weights_grad(plan, ctx.x, g)
    if ctx.y is not None and not all_finite(dw):
        g = _exact_relu_mask(dy, ctx.y)
        dw, db, gw = _weights_grad(plan, ctx.x, g)
    dx = None
    if input_grad:
        pd, to_w, diff_dst, diff_src = plan.bwd_data()
        wb = ctx.w_blocked if to_w.dst == plan.fwd_w.dst else to_w(ctx.w)
        gd = gw if gw.layout is diff_dst else to_layout(g, diff_dst)
        del g, gw   # the NCHW mask (and a second blocked copy) go before dx is allocated: a lower peak
        dxb = Blocked.empty(diff_src)
        pd.execute({C.DNNL_ARG_WEIGHTS: (to_w.dst, wb), C.DNNL_ARG_DIFF_DST: (diff_dst.md, gd.buf),
                    C.DNNL_ARG_DIFF_SRC: (diff_src.md, dxb.buf)})
        dx = dxb if isinstance(ctx.x, Blocked) and diff_src.dense else _into_plain(dxb, None)
    return dx, dw, db
