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
dx = (src*b + c) + dy*a, the same roundings as NumPy's), and the conv backward's ReLU mask ((y > 0) * dy). Measured (this 2-core machine, medians of 30): x*scale +
shift on (64, 64, 32, 32) 0.53 ms (NumPy's blocked two-pass version 1.9-2.8 ms, PyTorch 1.0).
"""
from __future__ import annotations

import ctypes

import numpy as np

from gpunet.onednn import _capi as C
from gpunet.onednn import engine as E
from gpunet.onednn.engine import PrimitiveDesc, cache, call, engine, plain

OPS = {"add": C.dnnl_binary_add, "mul": C.dnnl_binary_mul, "sub": C.dnnl_binary_sub, "gt": C.dnnl_binary_gt}


def _post_op_arg(i: int) -> int:
    """DNNL_ARG_ATTR_MULTIPLE_POST_OP(i) | DNNL_ARG_SRC_1: the execute argument of post-op i's src1."""
    return C.DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE * (i + 1) | C.DNNL_ARG_SRC_1


def _operand_shape(shape: tuple, kind: str) -> tuple:
    return shape if kind == "full" else (1, shape[1]) + (1,) * (len(shape) - 2)


class _Plan:
    """One pass: src0 (op) src1 [(post op) post src1 ...] on float32 tensors of `shape`."""

    def __init__(self, shape: tuple, op: str, src1: str, posts: tuple):
        lib = C.load()
        self.what = (f"binary {op} (src0 {shape} f32, src1 {src1}"
                     + "".join(f", post-op {p} {k}" for p, k in posts) + ")")
        self.x_md = plain(shape)
        self.src1_md = plain(_operand_shape(shape, src1))
        self.post_mds = [plain(_operand_shape(shape, k)) for _, k in posts]
        post, attr = C.handle(), C.handle()
        call("dnnl_post_ops_create", self.what, ctypes.byref(post))
        try:
            for (p, _), md in zip(posts, self.post_mds):
                call("dnnl_post_ops_append_binary", self.what, post, OPS[p], md.h)
            call("dnnl_primitive_attr_create", self.what, ctypes.byref(attr))
            call("dnnl_primitive_attr_set_post_ops", self.what, attr, post)
            self.pd = PrimitiveDesc("dnnl_binary_primitive_desc_create", self.what, engine().engine, OPS[op],
                                    self.x_md.h, self.src1_md.h, self.x_md.h, attr)
        finally:
            lib.dnnl_post_ops_destroy(post)
            if attr:
                lib.dnnl_primitive_attr_destroy(attr)

    def __call__(self, x, src1, posts, out):
        args = {C.DNNL_ARG_SRC_0: (self.x_md, x), C.DNNL_ARG_SRC_1: (self.src1_md, src1),
                C.DNNL_ARG_DST: (self.x_md, out)}
        for i, (md, a) in enumerate(zip(self.post_mds, posts)):
            args[_post_op_arg(i)] = (md, a)
        self.pd.execute(args)
        return out


def run(x: np.ndarray, op: str, src1: np.ndarray, posts=(), out=None) -> np.ndarray:
    """out = (...((x op src1) post_op_1 a_1) ...) for posts = [(post_op, a), ...]; each operand is a
    per-channel vector of length C (broadcast) or an array of x's shape. All float32, x C-contiguous with
    at least 2 dims (N, C, ...). A new array unless `out` is given."""
    shape = tuple(x.shape)

    def kind(a):
        return "full" if a.shape == shape else "channel"

    operands = [src1] + [a for _, a in posts]
    for a in operands:
        if a.dtype != np.float32 or a.shape not in (shape, (shape[1],)) or not a.flags.c_contiguous:
            raise ValueError(f"oneDNN binary: operand {a.shape} {a.dtype} must be float32, C-contiguous, of "
                             f"shape {shape} or ({shape[1]},)")
    key = ("binary", shape, op, kind(src1), tuple((p, kind(a)) for p, a in posts))
    plan = cache.get(key, lambda: _Plan(shape, op, kind(src1), key[4]))
    return plan(x, src1, [a for _, a in posts], E.output(shape) if out is None else out)


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
