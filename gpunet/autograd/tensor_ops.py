"""Tensor arithmetic, reductions, shapes and element-wise math as Nodes, and the Tensor operators over them.

Each node is written once against the array module of its inputs (`array_module`), keeps the input
dtype (Python scalars only), and reduces gradients over broadcast axes with `sum_to`.
"""
from __future__ import annotations

import numpy as np

from gpunet.autograd.core import Node, Tensor, array_module, as_tensor
from gpunet.backend import DeviceError, is_device_array
from gpunet import functional as F


def sum_to(g, shape):
    """Sum `g` down to `shape` over the axes NumPy broadcasting added or stretched (DeZero's sum_to)."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape) if lead or g.shape != shape else g


# --- arithmetic ------------------------------------------------------------------------------------

class Add(Node):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, gy):
        return (sum_to(gy, self.shapes[0]) if self.needs(0) else None,
                sum_to(gy, self.shapes[1]) if self.needs(1) else None)


class Sub(Node):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, gy):
        return (sum_to(gy, self.shapes[0]) if self.needs(0) else None,
                sum_to(-gy, self.shapes[1]) if self.needs(1) else None)


class Mul(Node):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        a, b = self.a, self.b
        return (sum_to(gy * b, a.shape) if self.needs(0) else None,
                sum_to(gy * a, b.shape) if self.needs(1) else None)


class Div(Node):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        a, b = self.a, self.b
        ga = gy / b
        return (sum_to(ga, a.shape) if self.needs(0) else None,
                sum_to(-ga * a / b, b.shape) if self.needs(1) else None)


class Neg(Node):
    def forward(self, a):
        return -a

    def backward(self, gy):
        return -gy


class Pow(Node):
    """x ** c for a constant exponent c."""

    def __init__(self, c):
        self.c = c

    def forward(self, a):
        self.a = a
        return a ** self.c

    def backward(self, gy):
        return gy * (self.c * self.a ** (self.c - 1))


class MatMul(Node):
    """a @ b for a, b with ndim >= 2 (batched over leading axes, broadcast like NumPy's matmul)."""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul: both operands need at least 2 dims, got {tuple(a.shape)} @ {tuple(b.shape)}")
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)}")
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        xp = array_module(gy)
        a, b = self.a, self.b
        ga = sum_to(gy @ xp.swapaxes(b, -1, -2), a.shape) if self.needs(0) else None
        gb = sum_to(xp.swapaxes(a, -1, -2) @ gy, b.shape) if self.needs(1) else None
        return ga, gb


# --- reductions -------------------------------------------------------------------------------------

def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return tuple(int(a) % ndim for a in axis)


def _expand(gy, x_shape, axes):
    """gy of a reduction (keepdims or not) reshaped so it broadcasts against the input."""
    return gy.reshape(tuple(1 if i in axes else s for i, s in enumerate(x_shape)))


class Sum(Node):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.x_shape, self.axes = x.shape, _axes(self.axis, x.ndim)
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        xp = array_module(gy)
        return xp.broadcast_to(_expand(gy, self.x_shape, self.axes), self.x_shape)


class Mean(Sum):
    def forward(self, x):
        y = super().forward(x)
        self.n = int(np.prod([x.shape[a] for a in self.axes]))
        return y / self.n

    def backward(self, gy):
        return super().backward(gy / self.n)


class Max(Node):
    """Maximum over `axis`; the gradient is shared equally by the elements equal to the maximum (ties)."""

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        y = x.max(axis=self.axis, keepdims=True)
        self.x, self.y, self.axes = x, y, _axes(self.axis, x.ndim)
        return y if self.keepdims else y.reshape(tuple(s for i, s in enumerate(y.shape) if i not in self.axes))

    def backward(self, gy):
        mask = (self.x == self.y).astype(gy.dtype)
        mask /= mask.sum(axis=self.axes, keepdims=True)
        return mask * _expand(gy, self.x.shape, self.axes)


# --- shapes -----------------------------------------------------------------------------------------

class Reshape(Node):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.x_shape)


class Transpose(Node):
    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        self.axes = tuple(range(x.ndim))[::-1] if not self.axes else tuple(int(a) % x.ndim for a in self.axes)
        return x.transpose(self.axes)

    def backward(self, gy):
        return gy.transpose(tuple(int(i) for i in np.argsort(self.axes)))


def _basic(key) -> bool:
    """Only ints, slices, None and Ellipsis: every element is selected at most once."""
    key = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice)) for k in key)


class GetItem(Node):
    """t[key]; backward scatters the gradient into zeros (adding where an index array repeats an element)."""

    def __init__(self, key):
        self.key = tuple(k.data if isinstance(k, Tensor) else k for k in key) if isinstance(key, tuple) else (
            key.data if isinstance(key, Tensor) else key)

    def forward(self, x):
        self.x_shape, self.x_dtype = x.shape, x.dtype
        return x[self.key]

    def backward(self, gy):
        xp = array_module(gy)
        gx = xp.zeros(self.x_shape, dtype=gy.dtype)
        if _basic(self.key):
            gx[self.key] = gy
        else:
            xp.add.at(gx, self.key, gy)
        return gx


class Concatenate(Node):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        self.bounds = np.cumsum([x.shape[self.axis] for x in xs])[:-1].tolist()
        return array_module(xs[0]).concatenate(xs, axis=self.axis)

    def backward(self, gy):
        xp = array_module(gy)  # contiguous pieces: kernels downstream take raw pointers
        return tuple(xp.ascontiguousarray(g) for g in xp.split(gy, self.bounds, axis=self.axis))


class Stack(Node):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        return array_module(xs[0]).stack(xs, axis=self.axis)

    def backward(self, gy):
        xp = array_module(gy)
        return tuple(xp.take(gy, i, axis=self.axis) for i in range(gy.shape[self.axis]))


# --- element-wise math -------------------------------------------------------------------------------

class Exp(Node):
    def forward(self, x):
        self.y = array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Node):
    def forward(self, x):
        self.x = x
        return array_module(x).log(x)

    def backward(self, gy):
        return gy / self.x


class Sqrt(Node):
    def forward(self, x):
        self.y = array_module(x).sqrt(x)
        return self.y

    def backward(self, gy):
        return gy / (2 * self.y)


class Tanh(Node):
    def forward(self, x):
        self.y = F.tanh(x)
        return self.y

    def backward(self, gy):
        return F.tanh_backward(gy, self.y)


class Sigmoid(Node):
    def forward(self, x):
        self.y = F.sigmoid(x)
        return self.y

    def backward(self, gy):
        return F.sigmoid_backward(gy, self.y)


class ReLU(Node):
    """max(x, 0); a oneDNN Blocked activation stays in its layout (gpunet.onednn.blocked)."""

    keeps_layout = True

    def forward(self, x):
        self.y = F.relu(x)
        return self.y

    def backward(self, gy):
        return F.relu_backward(gy, self.y)


# --- functions and operators -------------------------------------------------------------------------

def _pair(a, b):
    a = a if isinstance(a, Tensor) else as_tensor(a, like=b if isinstance(b, Tensor) else None)
    b = b if isinstance(b, Tensor) else as_tensor(b, like=a)
    if is_device_array(a.data) != is_device_array(b.data):
        where = ["CuPy (cuda)" if is_device_array(t.data) else "NumPy (cpu)" for t in (a, b)]
        raise DeviceError(f"tensor op: operands live on different devices: {a.shape} on {where[0]}, {b.shape} on "
                          f"{where[1]}; move one explicitly (gpunet.tensor(x, backend=...))")
    return a, b


def add(a, b):
    return Add()(*_pair(a, b))


def sub(a, b):
    return Sub()(*_pair(a, b))


def mul(a, b):
    return Mul()(*_pair(a, b))


def div(a, b):
    return Div()(*_pair(a, b))


def matmul(a, b):
    return MatMul()(*_pair(a, b))


def concatenate(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis; backward splits the gradient."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate: needs at least one tensor")
    return Concatenate(axis)(*tensors)


cat = concatenate  # PyTorch's name


def stack(tensors, axis: int = 0) -> Tensor:
    """Join tensors along a new axis; backward takes each slice back."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    return Stack(axis)(*tensors)


def _compare(op):
    def f(self, other):
        o = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, o), backend=self._backend)
    return f


def _pow(self, c):
    if isinstance(c, Tensor):
        raise TypeError("Tensor ** Tensor is not supported; the exponent must be a number")
    return Pow(c)(self)


def _reshape(self, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Reshape(tuple(shape))(self)


def _transpose(self, *axes):
    axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    return Transpose(tuple(axes))(self)


def _getitem(self, key):
    return GetItem(key)(self)


def _argmax(self, axis=None):
    return Tensor(self.data.argmax(axis=axis), backend=self._backend)


_METHODS = {
    "__add__": add, "__radd__": lambda s, o: add(o, s),
    "__sub__": sub, "__rsub__": lambda s, o: sub(o, s),
    "__mul__": mul, "__rmul__": lambda s, o: mul(o, s),
    "__truediv__": div, "__rtruediv__": lambda s, o: div(o, s),
    "__matmul__": matmul, "__rmatmul__": lambda s, o: matmul(o, s),
    "__neg__": lambda s: Neg()(s), "__pow__": _pow,
    "__getitem__": _getitem,
    "__eq__": _compare(lambda a, b: a == b), "__ne__": _compare(lambda a, b: a != b),
    "__lt__": _compare(lambda a, b: a < b), "__le__": _compare(lambda a, b: a <= b),
    "__gt__": _compare(lambda a, b: a > b), "__ge__": _compare(lambda a, b: a >= b),
    "sum": lambda s, axis=None, keepdims=False: Sum(axis, keepdims)(s),
    "mean": lambda s, axis=None, keepdims=False: Mean(axis, keepdims)(s),
    "max": lambda s, axis=None, keepdims=False: Max(axis, keepdims)(s),
    "argmax": _argmax,
    "reshape": _reshape, "transpose": _transpose, "T": property(lambda s: Transpose(())(s)),
    "exp": lambda s: Exp()(s), "log": lambda s: Log()(s), "sqrt": lambda s: Sqrt()(s),
    "tanh": lambda s: Tanh()(s), "sigmoid": lambda s: Sigmoid()(s), "relu": lambda s: ReLU()(s),
}
for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)
Tensor.__hash__ = object.__hash__  # __eq__ is element-wise; tensors still hash by identity
