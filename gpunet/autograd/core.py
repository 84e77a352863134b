"""The tape: Tensor, Node, the backward walk and `no_grad` (Chainer's FunctionNode, DeZero's core).

A Node's `forward(*arrays)` computes on the backend's arrays and keeps, as attributes of the node,
what its backward needs; `backward(*grad_outputs)` returns one gradient (or None) per input. Calling a
node on tensors records it when grad mode is on and some input requires grad: the outputs point at
their creator, the node holds its inputs. `Tensor.backward()` visits the recorded nodes newest
generation first (a heap), so a node runs only after every consumer of its outputs has added its
gradient, and frees each node's saved arrays as it goes unless `retain_graph=True`.

Nothing here names a device: arrays stay in their module (NumPy or CuPy) and ops pick it from the data.

Layouts: on the oneDNN engine an activation may be a `gpunet.onednn.blocked.Blocked` (oneDNN's blocked layout)
between nodes that declare `keeps_layout` (conv, batch norm, ReLU, max pool, the residual join). Every other
node, `Tensor.data` and the leaves' `.grad` get NCHW arrays: the conversion happens here, at the node
boundary, explicitly (docs/onednn.md, "Blocked activations").
"""
from __future__ import annotations

import contextlib
import heapq
import itertools

import numpy as np

from gpunet.backend import DeviceError, get_backend, is_device_array, to_host
from gpunet.onednn.blocked import Blocked, is_blocked, plain_of


class _Mode:
    enabled = True


@contextlib.contextmanager
def no_grad():
    """Record nothing inside the block (evaluation, optimizer updates): no graph, no saved arrays."""
    old, _Mode.enabled = _Mode.enabled, False
    try:
        yield
    finally:
        _Mode.enabled = old


@contextlib.contextmanager
def enable_grad():
    old, _Mode.enabled = _Mode.enabled, True
    try:
        yield
    finally:
        _Mode.enabled = old


def is_grad_enabled() -> bool:
    return _Mode.enabled


def array_module(a):
    """`numpy` or `cupy`, whichever the array `a` belongs to."""
    if is_device_array(a):
        import cupy
        return cupy
    return np


class Tensor:
    """An array on some device with an optional gradient. `.data` is the backend array (NumPy or CuPy),
    `.grad` the accumulated gradient (same device, dtype and shape) or None, `.creator` the node that
    produced it (None for a leaf)."""

    __slots__ = ("_storage", "_plain", "grad", "requires_grad", "creator", "generation", "_index", "_backend", "__weakref__")
    __array_ufunc__ = None  # numpy_array * tensor defers to Tensor.__rmul__ instead of looping elementwise

    def __init__(self, data, requires_grad: bool = False, backend=None):
        if isinstance(data, Tensor):
            raise TypeError("Tensor: data is already a Tensor; use t.detach() or t.data")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator = None
        self.generation = 0
        self._index = 0  # which output of its creator
        self._backend = backend
        if self.requires_grad and getattr(data, "dtype", np.dtype(object)).kind != "f":
            raise TypeError(f"Tensor: only floating tensors can require grad, got dtype {data.dtype}")

    # --- what it is ---
    @property
    def data(self):
        """The backend array. For an activation held in oneDNN's blocked layout (`storage`): its NCHW copy, made
        on first read and kept, read-only (writing to it could not reach the blocked original). The graph
        goes on with the blocked original, so reading an activation never changes what is computed."""
        d = self._storage
        if type(d) is Blocked:
            p = self._plain
            if p is None:
                p = self._plain = d.to_plain()
                p.flags.writeable = False
            return p
        return d

    @data.setter
    def data(self, value):
        self._storage, self._plain = value, None

    @property
    def storage(self):
        """The array as held: `data`, or a oneDNN Blocked activation that `data` would reorder (for device and
        shape checks that must not convert)."""
        return self._storage

    @property
    def shape(self):
        return tuple(self._storage.shape)

    @property
    def dtype(self):
        return self._storage.dtype

    @property
    def ndim(self) -> int:
        return self._storage.ndim

    @property
    def size(self) -> int:
        return self._storage.size

    @property
    def backend(self):
        """The Backend the tensor was made on, else the one its array type implies (numpy or cupy)."""
        if self._backend is not None:
            return self._backend
        return get_backend("cupy" if is_device_array(self._storage) else "numpy")

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}{grad})"

    def numpy(self) -> np.ndarray:
        """A host NumPy copy (a device->host read on CuPy)."""
        host = to_host(self.data)
        return host.copy() if host is self.data else host

    def item(self):
        return self.data.item()

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.data)

    def __int__(self) -> int:
        return int(self.data)

    def detach(self) -> "Tensor":
        """The same data, cut from the graph (no gradient flows through it)."""
        return Tensor(self._storage, backend=self._backend)

    def zero_grad(self) -> None:
        self.grad = None

    # --- differentiation ---
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf), times `grad`, into every leaf's `.grad`. A one-element tensor
        needs no `grad` (1 is used); otherwise pass an array of this tensor's shape."""
        backward([self], [grad], retain_graph=retain_graph)


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """A Tensor for `x`: itself, or a constant (requires_grad False) wrapping an array or a Python scalar;
    scalars take `like`'s dtype and device so float32 stays float32."""
    if isinstance(x, Tensor):
        return x
    if like is not None and np.isscalar(x):
        return Tensor(array_module(like.data).asarray(x, dtype=like.dtype), backend=like._backend)
    if not hasattr(x, "shape"):
        raise TypeError(f"expected a Tensor, an array or a number, got {type(x).__name__}")
    return Tensor(x)


def tensor(array, requires_grad: bool = False, backend=None, dtype=None) -> Tensor:
    """A leaf Tensor holding `array` moved to `backend` (a name or Backend; default: where the array is)."""
    if isinstance(array, Tensor):
        array = array.data
    if backend is None:
        backend = "cupy" if is_device_array(array) else "numpy"
    be = get_backend(backend)
    return Tensor(be.asarray(array, dtype=dtype), requires_grad=requires_grad, backend=be)


class _Ref:
    """How a node remembers an input made by another node: that node and the output's index and shape, not the
    Tensor, so an intermediate array is freed as soon as nothing but the graph would hold it (Chainer's
    VariableNode). Leaves that require grad are kept as Tensors (their `.grad` is written)."""

    __slots__ = ("node", "index", "shape")
    requires_grad = True

    def __init__(self, t: "Tensor"):
        self.node, self.index, self.shape = t.creator, t._index, t.shape


class Node:
    """One recorded operation. Subclasses define `forward(*arrays) -> array or tuple of arrays` (saving on
    `self` what backward needs) and `backward(*grad_outputs) -> input gradients` (a tuple with one entry
    per input, None where no gradient is needed; a single array for a one-input node). In backward,
    `self.needs(i)` says whether input i wants a gradient and `len(self.inputs)` is the input count;
    grad_outputs entries are None for outputs that received no gradient (multi-output nodes only).

    The node keeps only what forward saved and references to its inputs' producers: the input arrays
    themselves stay alive only if forward saved them. A node instance records one call: make a new one per
    use (`Exp()(x)`), as every op and layer does."""

    generation = 0
    inputs = None
    n_out = 1
    keeps_layout = False   # True: forward/backward take and may return Blocked activations (see the module doc)

    def __call__(self, *inputs):
        tensors = [x if isinstance(x, Tensor) else as_tensor(x) for x in inputs]
        ys = self.forward(*[t._storage if self.keeps_layout else t.data for t in tensors])
        multi = isinstance(ys, tuple)
        # the last input's device wins: a layer's parameters come after its input and know the model's backend
        be = next((t._backend for t in reversed(tensors) if t._backend is not None), None)
        outs = [Tensor(y, backend=be) for y in (ys if multi else (ys,))]
        if _Mode.enabled and any(t.requires_grad for t in tensors):
            self.inputs = [(t if t.creator is None else _Ref(t)) if t.requires_grad else None for t in tensors]
            self.generation = max(t.generation for t in tensors)
            self.n_out = len(outs)
            for i, o in enumerate(outs):
                o.creator, o.requires_grad, o.generation, o._index = self, True, self.generation + 1, i
        return tuple(outs) if multi else outs[0]

    def needs(self, i: int) -> bool:
        t = self.inputs[i]
        return t is not None and t.requires_grad  # read now: backward_params turns the batch's off

    def forward(self, *xs):
        raise TypeError(f"{type(self).__name__} does not define forward()")

    def backward(self, *gys):
        raise TypeError(f"{type(self).__name__} does not define backward()")

    def _free(self) -> None:
        """Drop the inputs and everything forward saved; a second backward through here then fails clearly."""
        self.__dict__.clear()
        self.__dict__["_freed"] = True

    @property
    def name(self) -> str:
        return type(self).__name__


_order = itertools.count()


def _sum(a, b):
    """a + b, two gradients of one tensor; a Blocked one is summed by oneDNN in its layout."""
    if is_blocked(a) or is_blocked(b):
        from gpunet.onednn import binary
        return binary.add(a, b) if is_blocked(a) else binary.add(b, a)
    return a + b


def backward(tensors, grads=None, retain_graph: bool = False) -> None:
    """Backpropagate from several outputs at once (torch.autograd.backward): `grads[i]` is d(total)/d(tensors[i])
    (None: ones for a one-element tensor, else that output contributes nothing)."""
    tensors = list(tensors)
    grads = [None] * len(tensors) if grads is None else list(grads)
    pending: dict[tuple, object] = {}   # (id(node), output index) -> summed gradient
    handed: set[int] = set()            # arrays already given out (seeds, leaf grads): copy before reusing one
    heap, queued = [], set()

    def owner(g):
        base = getattr(g, "base", None)
        return id(base if base is not None else g)

    def push(node):
        if id(node) not in queued:
            if "_freed" in node.__dict__:
                raise RuntimeError(
                    f"backward through the graph a second time: {node.name}'s saved arrays were freed by the "
                    f"first backward; pass retain_graph=True to that backward to keep them")
            queued.add(id(node))
            heapq.heappush(heap, (-node.generation, next(_order), node))

    def give(t, g, what: str):
        if g is None or t is None or not t.requires_grad:
            return
        if tuple(g.shape) != tuple(t.shape):
            raise ValueError(f"{what}: gradient of shape {tuple(g.shape)} for a tensor of shape {tuple(t.shape)}")
        if isinstance(t, _Ref):
            key = (id(t.node), t.index)
            if key in pending:
                pending[key] = _sum(pending[key], g)
            else:
                pending[key] = g
                push(t.node)
            return
        if is_device_array(g) != is_device_array(t.data):
            raise DeviceError(f"{what}: gradient is a {'CuPy' if is_device_array(g) else 'NumPy'} array but the "
                              f"tensor lives on {'CuPy' if is_device_array(t.data) else 'NumPy'}; move it with "
                              f"backend.asarray")
        g = plain_of(g)     # a leaf's .grad is an NCHW array
        if t.grad is None:  # a leaf: own the gradient and keep it writable (optimizers update grads in place)
            fresh = owner(g) not in handed and g.flags.c_contiguous
            t.grad = g if fresh else array_module(g).array(g, copy=True, order="C")
            handed.add(owner(t.grad))
        else:
            t.grad = t.grad + g

    any_grad = False
    for t, g in zip(tensors, grads):
        if not isinstance(t, Tensor):
            raise TypeError(f"backward: expected Tensors, got {type(t).__name__}")
        if g is None:
            if t.size != 1:
                continue
            g = array_module(t.data).ones(t.data.shape, dtype=t.dtype)
        elif isinstance(g, Tensor):
            g = g.data
        if not t.requires_grad:
            raise RuntimeError(f"backward: tensor of shape {t.shape} does not require grad and has no graph "
                               f"(created under no_grad, detached, or from inputs that need no gradient)")
        if t.creator is not None and "_freed" in t.creator.__dict__:
            push(t.creator)  # raises the clear error
        handed.add(owner(g))
        any_grad = True
        give(t if t.creator is None else _Ref(t), g, "backward")
    if not any_grad:
        raise RuntimeError("backward: grad can be omitted only for one-element tensors; pass grad= shaped like "
                           f"the tensor ({', '.join(str(t.shape) for t in tensors)})")
    while heap:
        _, _, node = heapq.heappop(heap)
        gys = [pending.pop((id(node), i), None) for i in range(node.n_out)]
        inputs = node.inputs
        if any(g is not None for g in gys):
            if not node.keeps_layout:
                gys = [plain_of(g) for g in gys]
            gxs = node.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            if len(gxs) != len(inputs):
                raise RuntimeError(f"{node.name}.backward returned {len(gxs)} gradients for {len(inputs)} inputs")
            for t, g in zip(inputs, gxs):
                give(t, g, f"{node.name}.backward")
        if not retain_graph:
            node._free()
