"""Activations kept in oneDNN's own layouts between oneDNN ops (docs/onednn.md, "Blocked activations").

A oneDNN convolution picks a blocked layout for its output (nChw16c on AVX-512: 16 channels innermost).
Reordering every output back to NCHW and the next op's input into the blocked layout again cost 5.2 ms of a
50 ms resnet-small step, and on NCHW oneDNN's batch norm and max-pool backward run slow generic kernels
while on the blocked layout they run its jit kernels. So on the oneDNN engine the autograd nodes ask the
conv for its output as it is (`keep_layout=True`), and the ops that follow (batch norm, ReLU, pooling,
the residual add, the next conv) take that `Blocked` value and return one, without leaving the layout.

The boundary is explicit: a `Blocked` is not an array. NumPy refuses it (`__array__` raises), so no code
can read it through an implicit conversion that would cost a reorder unnoticed, or misread its memory.
Whoever needs NCHW calls `to_plain()` (one reorder into a new array); `Tensor.data` does, so user code,
hooks, checkpoints and parity always see NCHW arrays. Only float32 4-D activations on the NumPy backend's
oneDNN engine are ever blocked; nothing is on the NumPy engine or on CuPy.

Layouts are interned per logical shape (`layout`): two primitives that pick the same memory descriptor
share one `Layout`, so "same layout" is an identity test, and the reorder between two layouts is made
once and kept on the source layout.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet.onednn import engine as E
from gpunet.onednn.engine import MemDesc, PrimitiveCache, Reorder, plain


class Layout:
    """A float32 tensor of logical shape `shape` (NCHW order) in the memory descriptor `md`."""

    def __init__(self, md: MemDesc, shape: tuple):
        self.md, self.shape = md, tuple(shape)
        self.nbytes = md.size()
        self.is_plain = md == plain(self.shape)
        # no padding (C a multiple of the channel block): only such layouts leave an op as a Blocked, because
        # oneDNN's kernels do not all keep a padded block's extra channels at zero, and they read them
        self.dense = self.nbytes == 4 * math.prod(self.shape)
        self._reorders: dict = {}    # destination Layout -> Reorder

    def reorder_to(self, dst: "Layout") -> Reorder:
        r = self._reorders.get(dst)
        if r is None:
            r = self._reorders[dst] = Reorder(self.md, dst.md, f"activation {self.shape} between layouts")
        return r

    def __repr__(self) -> str:
        return f"Layout({self.shape}, {'plain' if self.is_plain else 'blocked'}, {self.nbytes} bytes)"


_layouts = PrimitiveCache(1024)   # logical shape -> its Layouts (a dropped entry only costs a reorder later)


def layout(md: MemDesc, shape) -> Layout:
    """The interned Layout of `md` for this logical shape (a primitive's src/dst descriptor)."""
    shape = tuple(int(s) for s in shape)
    known = _layouts.get(shape, list)
    for lay in known:
        if lay.md == md:
            return lay
    lay = Layout(md, shape)
    known.append(lay)
    return lay


def plain_layout(shape) -> Layout:
    """The interned NCHW Layout of `shape` (found without making a descriptor: every to_plain asks)."""
    shape = tuple(int(s) for s in shape)
    for lay in _layouts.get(shape, list):
        if lay.is_plain:
            return lay
    return layout(plain(shape), shape)


class Blocked:
    """A float32 activation of logical NCHW `shape` held in a oneDNN `Layout` (a 64-byte aligned byte buffer).

    Not an array: `to_plain()` gives the NCHW array; `np.asarray` raises, and so does arithmetic (element-wise
    passes on Blocked values are gpunet.onednn.binary's add, relu and relu_backward)."""

    __slots__ = ("buf", "layout")
    __array_ufunc__ = None          # ndarray + Blocked raises TypeError instead of converting
    dtype = np.dtype(np.float32)

    def __init__(self, buf: np.ndarray, lay: Layout):
        if buf.nbytes != lay.nbytes:
            raise ValueError(f"Blocked: a buffer of {buf.nbytes} bytes cannot hold {lay}")
        self.buf, self.layout = buf, lay

    @classmethod
    def empty(cls, lay: Layout) -> "Blocked":
        return cls(E.empty(lay.md), lay)

    @property
    def shape(self) -> tuple:
        return self.layout.shape

    @property
    def ndim(self) -> int:
        return len(self.layout.shape)

    @property
    def size(self) -> int:
        return math.prod(self.layout.shape)

    @property
    def nbytes(self) -> int:
        return self.buf.nbytes

    def to_plain(self) -> np.ndarray:
        """The C-contiguous NCHW float32 array: one reorder into a new array (a view of the buffer when the
        layout is plain already)."""
        if self.layout.is_plain:
            return self.buf.view(np.float32).reshape(self.shape)
        out = E.output(self.shape)
        self.layout.reorder_to(plain_layout(self.shape))(self.buf, out)
        return out

    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"a oneDNN blocked activation {self.shape} has no implicit NumPy view: call .to_plain() "
                        f"(Tensor.data does), so that every reorder is explicit")

    def __repr__(self) -> str:
        return f"Blocked(shape={self.shape}, {self.layout})"


def is_blocked(a) -> bool:
    return isinstance(a, Blocked)


def plain_of(a):
    """a as an NCHW array: a Blocked is reordered, anything else returned as it is."""
    return a.to_plain() if isinstance(a, Blocked) else a


def to_layout(a, lay: Layout) -> Blocked:
    """a (a Blocked, or a float32 NCHW array of lay's shape) in layout `lay`: itself when it already is."""
    if isinstance(a, Blocked):
        if a.layout is lay:
            return a
        if a.shape != lay.shape:
            raise ValueError(f"oneDNN: an activation of shape {a.shape} cannot take a layout of shape {lay.shape}")
        r = a.layout.reorder_to(lay)
        if r.same:        # equal descriptors interned twice (the layout registry dropped one): no copy
            return Blocked(a.buf, lay)
        out = Blocked.empty(lay)
        r(a.buf, out.buf)
        return out
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or tuple(a.shape) != lay.shape:
        raise TypeError(f"oneDNN: expected a float32 array of shape {lay.shape}, got "
                        f"{getattr(a, 'dtype', type(a).__name__)} {tuple(getattr(a, 'shape', ()))}")
    a = np.ascontiguousarray(a)
    if lay.is_plain:
        return Blocked(a.reshape(-1).view(np.uint8), lay)
    out = Blocked.empty(lay)
    plain_layout(lay.shape).reorder_to(lay)(a, out.buf)
    return out
