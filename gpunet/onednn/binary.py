"""Element-wise passes on oneDNN's binary primitive: one multi-threaded jit pass where NumPy needs two
or three (each a full read and write of the tensor, one thread per ufunc call).

A pass is a binary op src0 (op) src1 followed by binary post-ops, each with its own src1; every src1
is either a per-channel vector, given as a (1, C, 1, 1) tensor that oneDNN broadcasts over N, H and W,
or a full tensor of src0's shape. Tensors are plain NCHW (or (N, C)) float32, wrapped without a copy.
oneDNN picks its `jit:uni` kernel for these on x86 (per-channel broadcast over a plain layout).

Rounding: each op rounds to float32 as it goes (no fused multiply-add between an op and its post-op:
measured bitwise equal to NumPy's x*scale then + shift on (64, 64, 32, 32) and (256, 3, 32, 32)).

Used by: batch-norm inference (x*scale + shift, or (x - mean)*scale + beta far from zero), the NumPy
engine's batch-norm training passes on the oneDNN engine (ChannelPasses: y = d*scale + shift, and
dx = (src*b + c) + dy*a, the same roundings as NumPy's), the conv backward's ReLU mask ((y > 0) * dy), and
on Blocked activations (any layout; full operands share src0's) the autograd nodes' ReLU, its gradient, the
residual join relu(a + b) and gradient sums (`relu`, `relu_backward`, `add`). Measured (this 2-core machine,
medians of 30): x*scale + shift on (64, 64, 32, 32) 0.53 ms (NumPy's blocked two-pass version 1.9-2.8 ms,
PyTorch 1.0).
"""
from __future__ import annotations

import ctypes

import numpy as np

from gpunet.arrays import all_finite, relu_grad, relu_into
from gpunet.onednn import _capi as C
from gpunet.onednn import engine as E
from gpunet.onednn.blocked import Blocked, to_layout
from gpunet.onednn.engine import PrimitiveDesc, any_, cache, call, engine, plain

OPS = {"add": C.dnnl_binary_add, "mul": C.dnnl_binary_mul, "sub": C.dnnl_binary_sub, "gt": C.dnnl_binary_gt}
ELTWISE = {"relu": C.dnnl_eltwise_relu}   # post-ops without an operand


def _post_op_arg(i: int) -> int:
    """DNNL_ARG_ATTR_MULTIPLE_POST_OP(i) | DNNL_ARG_SRC_1: the execute argument of post-op i's src1."""
    return C.DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE * (i + 1) | C.DNNL_ARG_SRC_1


def _operand_shape(shape: tuple, kind: str) -> tuple:
    return shape if kind == "full" else (1, shape[1]) + (1,) * (len(shape) - 2)


class _Plan:
    """One pass: src0 (op) src1 [(post op) post src1 ...] on float32 tensors of `shape` in memory descriptor
    `md` (plain NCHW, or a Blocked activation's layout, `blocked`: full operands share it)."""

    def __init__(self, shape: tuple, md, blocked: bool, op: str, src1: str, posts: tuple):
        lib = C.load()
        self.what = (f"binary {op} (src0 {shape} f32, src1 {src1}"
                     + "".join(f", post-op {p} {k}" for p, k in posts) + ")")
        self.x_md = md

        def operand_md(kind):
            return md if kind == "full" else plain(_operand_shape(shape, kind))

        # a per-channel src1 beside a blocked src0: plain (1, C, 1, 1) sends oneDNN to its reference kernel (60-110
        # ms instead of 1 on (64, 16, 32, 32), measured); format `any` lets it pick the blocked vector, whose
        # bytes are the plain vector's when C fills whole blocks (Layout.dense; checked below)
        blocked_channel = src1 == "channel" and blocked
        src1_md = any_(_operand_shape(shape, src1)) if blocked_channel else operand_md(src1)
        self.post_mds = [None if k is None else operand_md(k) for _, k in posts]
        post, attr = C.handle(), C.handle()
        call("dnnl_post_ops_create", self.what, ctypes.byref(post))
        try:
            for (p, _), pmd in zip(posts, self.post_mds):
                if pmd is None:    # an eltwise post-op (ReLU): no operand
                    call("dnnl_post_ops_append_eltwise", self.what, post, ELTWISE[p], 0.0, 0.0)
                else:
                    call("dnnl_post_ops_append_binary", self.what, post, OPS[p], pmd.h)
            call("dnnl_primitive_attr_create", self.what, ctypes.byref(attr))
            call("dnnl_primitive_attr_set_post_ops", self.what, attr, post)
            self.pd = PrimitiveDesc("dnnl_binary_primitive_desc_create", self.what, engine().engine, OPS[op],
                                    self.x_md.h, src1_md.h, self.x_md.h, attr)
        finally:
            lib.dnnl_post_ops_destroy(post)
            if attr:
                lib.dnnl_primitive_attr_destroy(attr)
        self.src1_md = self.pd.md(C.dnnl_query_src_md, 1) if blocked_channel else src1_md
        if blocked_channel and self.src1_md.size() != 4 * shape[1]:
            raise C.OnednnError("dnnl_binary_primitive_desc_create", C.dnnl_unimplemented,
                                f"{self.what}: the per-channel operand's layout is not {shape[1]} packed floats")

    def __call__(self, x, src1, posts, out):
        args = {C.DNNL_ARG_SRC_0: (self.x_md, x), C.DNNL_ARG_SRC_1: (self.src1_md, src1),
                C.DNNL_ARG_DST: (self.x_md, out)}
        for i, (md, a) in enumerate(zip(self.post_mds, posts)):
            if md is not None:
                args[_post_op_arg(i)] = (md, a)
        self.pd.execute(args)
        return out


def run(x, op: str, src1, posts=(), out=None):
    """out = (...((x op src1) post_op_1 a_1) ...) for posts = [(post_op, a), ...]; post_op "relu" takes a None
    operand. x is a C-contiguous float32 array with at least 2 dims (N, C, ...), or a Blocked activation;
    each operand is a per-channel vector of length C (broadcast) or a full tensor: an array of x's shape,
    or for a Blocked x a Blocked in x's layout. A new array (a new Blocked) unless `out` is given."""
    shape = tuple(x.shape)
    lay = x.layout if isinstance(x, Blocked) else None

    def kind(a):
        if a is None:
            return None
        if lay is not None and isinstance(a, Blocked):
            if a.layout is not lay:
                raise ValueError(f"oneDNN binary: a full operand in {a.layout} for src0 in {lay}")
            return "full"
        if a.dtype != np.float32 or a.shape not in (shape, (shape[1],)) or not a.flags.c_contiguous \
                or (lay is not None and a.shape != (shape[1],)):
            raise ValueError(f"oneDNN binary: operand {a.shape} {a.dtype} must be float32, C-contiguous, of "
                             f"shape {shape} or ({shape[1]},)")
        return "full" if a.shape == shape else "channel"

    for p, a in posts:
        if (p in ELTWISE) != (a is None):
            raise ValueError(f"oneDNN binary: post-op {p!r} with operand {type(a).__name__}")
    key = ("binary", shape, lay, op, kind(src1), tuple((p, kind(a)) for p, a in posts))
    plan = cache.get(key, lambda: _Plan(shape, plain(shape) if lay is None else lay.md,
                                        lay is not None and not lay.is_plain, op, key[4], key[5]))

    def buf(a):
        return a.buf if isinstance(a, Blocked) else a

    if lay is None:
        dst = E.output(shape) if out is None else out
        return plan(x, src1, [a for _, a in posts], dst)
    dst = Blocked.empty(lay) if out is None else out
    plan(x.buf, buf(src1), [buf(a) for _, a in posts], dst.buf)
    return dst


# --- passes on Blocked activations (gpunet.onednn.blocked): the autograd nodes' ReLU, residual join and
# gradient sums, in the layout the conv chose ------------------------------------------------------------

def add(a: Blocked, b, relu: bool = False) -> Blocked:
    """a + b (then max(., 0) when relu) in a's layout, one binary pass; b is converted to a's layout first.
    oneDNN's ReLU turns NaN into 0, so with relu, operands that are not all finite take NumPy's add and relu
    (NaN kept, the NumPy rule)."""
    b = to_layout(b, a.layout)
    if not relu:
        return run(a, "add", b)
    if not (all_finite(a.buf.view(np.float32)) and all_finite(b.buf.view(np.float32))):
        s = a.to_plain() + b.to_plain()
        relu_into(s, s)
        return to_layout(s, a.layout)
    return run(a, "add", b, [("relu", None)])


def _zeros(c: int) -> np.ndarray:
    return np.zeros(c, np.float32)


def relu(x: Blocked) -> Blocked:
    """max(x, 0), NaN kept (the NumPy rule): oneDNN's ReLU turns NaN into 0, so an input that is not all finite
    (one read-only sum, gpunet.arrays.all_finite) takes NumPy's relu on its NCHW copy."""
    if not all_finite(x.buf.view(np.float32)):
        src = x.to_plain()
        y = np.empty_like(src)
        relu_into(y, src)
        return to_layout(y, x.layout)
    return run(x, "add", _zeros(x.shape[1]), [("relu", None)])


def relu_backward(dy, y: Blocked) -> Blocked:
    """dy where y > 0, else 0, in y's layout: (y > 0) * dy in one binary pass, exact for a finite dy; a dy
    that is not all finite (0 * inf = NaN behind the mask) takes NumPy's exact relu_grad."""
    dy = to_layout(dy, y.layout)
    if not all_finite(dy.buf.view(np.float32)):
        return to_layout(relu_grad(dy.to_plain(), y.to_plain()), y.layout)
    return run(y, "gt", _zeros(y.shape[1]), [("mul", dy)])


class ChannelPasses:
    """The per-channel full-tensor passes the NumPy engine's batch norm hands to oneDNN on the oneDNN
    engine; arrays are (N, C, S) float32 C-contiguous views (S = H*W), vectors float32 of length C."""

    @staticmethod
    def affine(src, scale, shift, out):
        """out = src*scale + shift (out may be src)."""
        n, c, s = src.shape
        run(src.reshape(n, c, s, 1), "mul", scale, [("add", shift)], out=out.reshape(n, c, s, 1))

    @staticmethod
    def axpy(src, scale, acc):
        """acc = src*scale + acc, in place (each element of acc is read before it is written)."""
        n, c, s = src.shape
        acc4 = acc.reshape(n, c, s, 1)
        run(src.reshape(n, c, s, 1), "mul", scale, [("add", acc4)], out=acc4)
