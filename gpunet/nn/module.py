"""Parameter and Module: the containers of weights; forward records graph nodes (gpunet.autograd).

Called on a Tensor, a Module returns a Tensor: `loss = crit(model(x), y); loss.backward()` fills every
`param.grad` (parameters with `requires_grad=False` are skipped). A module called twice in one forward
makes two nodes, and its parameters receive the sum of both gradients.

Called on plain arrays, a Module returns a plain array and, after a training-mode forward,
`dx = module.backward(dy)` runs the same recorded nodes from that output (a thin view kept for code
written before autograd; `backward_params(dy)` skips the input gradient). Eval-mode array calls record
nothing; each backward frees the graph of its forward.

Parameters, buffers and submodules assigned as attributes are registered under PyTorch's names
(`weight`, `bias`, `0.weight`, `body.1.running_mean`), so `state_dict()` keys and shapes match
PyTorch's and weights move between the two libraries.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, NamedTuple

import numpy as np

from gpunet.autograd import Tensor, backward, is_grad_enabled, no_grad
from gpunet.backend import Backend, DeviceError, get_backend, is_device_array


class Parameter(Tensor):
    """A trainable leaf Tensor: `.data` (on the module's device), `.grad` (None until a backward), `.requires_grad`
    (True unless frozen). Gradients from every use in a forward add up in `.grad`."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"


def _params(*params):
    """The given parameters up to the first None (an absent bias), for a node's inputs."""
    out = []
    for p in params:
        if p is None:
            break
        out.append(p)
    return out


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict` found missing in, or unexpected from, the given dict."""
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of layers, containers and models.

    Subclasses implement `forward(x)` and `backward(dy) -> dx`. They create their parameters as host
    arrays and finish `__init__` with `self.to(backend, dtype)`; the default device is NumPy.
    """

    def __init__(self):
        d = self.__dict__
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_modules"] = OrderedDict()
        d["_backend"] = get_backend("numpy")
        d["_cache"] = None
        d["training"] = True

    # --- registration (PyTorch's attribute protocol) ---

    def __setattr__(self, name, value):
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        params, buffers, modules = d["_parameters"], d["_buffers"], d["_modules"]
        if isinstance(value, Parameter) or (value is None and name in params):
            target = params
        elif isinstance(value, Module):
            target = modules
        elif name in buffers:
            target = buffers
        else:
            target = None
        for registry in (params, buffers, modules):
            if registry is not target:
                registry.pop(name, None)
        if target is None:
            object.__setattr__(self, name, value)
        else:
            d.pop(name, None)
            target[name] = value

    def __getattr__(self, name):  # only called when normal lookup fails
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array) -> None:
        """A persistent non-trainable array (running statistics): saved in state_dict, moved by `to`."""
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    # --- traversal ---

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if p is not None:
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self) -> Iterator[tuple[str, object]]:
        for prefix, m in self.named_modules():
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{prefix}.{name}" if prefix else name), b

    def _state_entries(self, prefix: str = ""):
        """(key, owner, name, is_param) in PyTorch's state_dict order: own params, own buffers, children."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, self, name, True
        for name, b in self._buffers.items():
            if b is not None:
                yield prefix + name, self, name, False
        for name, m in self._modules.items():
            yield from m._state_entries(f"{prefix}{name}.")

    # --- modes, gradients, devices ---

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.__dict__["training"] = bool(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget accumulated gradients (set to None, like PyTorch's default)."""
        for p in self.parameters():
            p.grad = None

    @property
    def backend(self) -> Backend:
        return self._backend

    def to(self, device=None, dtype=None) -> "Module":
        """Move parameters, gradients and buffers to `device` (a name such as "cuda" or a Backend) and/or
        cast floating arrays to `dtype`. Returns self. Create optimizers after moving (like PyTorch)."""
        be = self._backend if device is None else get_backend(device)
        dt = None if dtype is None else np.dtype(dtype)
        if dt is not None and dt.kind != "f":
            raise TypeError(f"Module.to: dtype must be a floating type, got {dt}")

        def move(a):
            if a is None:
                return None
            cast = dt if dt is not None and a.dtype.kind == "f" else a.dtype
            return be.asarray(a, dtype=cast)

        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data, p.grad, p._backend = move(p.data), move(p.grad), be
            for name, b in list(m._buffers.items()):
                m._buffers[name] = move(b)
            m.__dict__["_backend"] = be
            m.__dict__["_cache"] = None
        return self

    def double(self) -> "Module":
        return self.to(dtype=np.float64)

    def float(self) -> "Module":
        return self.to(dtype=np.float32)

    # --- serialisation ---

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Host NumPy copies of every parameter and buffer, under PyTorch's names and shapes."""
        out = OrderedDict()
        for key, owner, name, is_param in self._state_entries():
            a = owner._parameters[name].data if is_param else owner._buffers[name]
            host = owner._backend.asnumpy(a)
            out[key] = host.copy() if host is a else host  # never alias the live weights
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (NumPy, CuPy, or anything np.asarray accepts, e.g. CPU torch tensors) into this model,
        moving them to its device and dtype. Shapes must match always; with strict=True the key sets must
        match too. Returns (missing_keys, unexpected_keys)."""
        entries = {key: (owner, name, is_param) for key, owner, name, is_param in self._state_entries()}
        missing = [k for k in entries if k not in state_dict]
        unexpected = [k for k in state_dict if k not in entries]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: keys do not match: missing {missing}, unexpected {unexpected} "
                           f"(pass strict=False to load the rest)")
        staged = []
        for key, (owner, name, is_param) in entries.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            if not is_device_array(value):   # device arrays move device to device; np.asarray would refuse them
                value = np.asarray(value)
            current = owner._parameters[name].data if is_param else owner._buffers[name]
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"load_state_dict: shape mismatch for {key!r}: checkpoint has "
                                 f"{tuple(value.shape)}, model expects {tuple(current.shape)}")
            array = owner._backend.asarray(value, dtype=current.dtype)
            staged.append((owner, name, is_param, array.copy() if array is value else array))  # own the data
        for owner, name, is_param, array in staged:  # nothing changes unless every key is valid
            if is_param:
                owner._parameters[name].data = array
            else:
                owner._buffers[name] = array
        return IncompatibleKeys(missing, unexpected)

    # --- forward / backward plumbing ---

    _array_grad_args = None  # array API: how many leading float arguments get an input gradient (None: all)
    _follows_input = False   # losses: no device of their own

    def __call__(self, *args, **kwargs):
        if any(isinstance(a, Tensor) for a in args) or any(isinstance(v, Tensor) for v in kwargs.values()):
            return self.forward(*args, **kwargs)
        return self._call_arrays(args, kwargs)

    def forward(self, x):
        raise TypeError(f"{type(self).__name__} does not define forward()")

    def _call_arrays(self, args, kwargs):
        """The array API: wrap the arrays as leaf Tensors, run forward (recording only in training mode),
        keep (inputs, output) for `backward`, and return the output's array."""
        record = self.training and is_grad_enabled()
        be, limit = (None if self._follows_input else self._backend), self._array_grad_args
        n = [0]

        def wrap(a):
            if a is None or not hasattr(a, "dtype"):
                return a
            wants = record and a.dtype.kind == "f" and (limit is None or n[0] < limit)
            n[0] += 1
            return Tensor(a, requires_grad=wants, backend=be)

        ins = [wrap(a) for a in args]
        kw = {k: wrap(v) for k, v in kwargs.items()}
        if record:
            out = self.forward(*ins, **kw)
        else:
            with no_grad():
                out = self.forward(*ins, **kw)
        self.__dict__["_cache"] = (ins, kw, out) if record else None
        for m in self.modules():
            m._arrays_out(out)
        return out.data if isinstance(out, Tensor) else out

    def _arrays_out(self, out) -> None:
        """Hook for modules that keep extra outputs on themselves (recurrent states)."""

    def _array_roots(self, out, extra):
        """(tensors, grads) a legacy backward starts from: the output and dy, by default."""
        return [out], []

    def backward(self, dy, *extra):
        """dx for the last training-mode array forward: runs the recorded nodes from its output with gradient
        `dy`, accumulating into every `param.grad`, and frees them. Returns the first input's gradient."""
        ins = self._run_array_backward(dy, extra, input_grad=True)
        x = ins[0] if ins else None
        return x.grad if isinstance(x, Tensor) and x.requires_grad else None

    def backward_params(self, dy) -> None:
        """Backward for a caller that needs no gradient with respect to the input (a training step: the input
        is the data batch): the same parameter gradients, and nodes skip the input gradient's work."""
        self._run_array_backward(dy, (), input_grad=False)

    def _run_array_backward(self, dy, extra, input_grad: bool):
        name = type(self).__name__
        cache = self._cache
        if cache is None:
            raise RuntimeError(
                f"{name}.backward() called without a preceding forward() in training mode "
                f"(eval-mode forwards keep no cache, and each backward frees it; call model.train())")
        self.__dict__["_cache"] = None
        ins, kw, out = cache
        if not self._follows_input:  # a loss's gradient is checked against its input's device by the walk
            self._backend.check(dy, f"{name}.backward gradient")
        if isinstance(out, Tensor) and tuple(dy.shape) != out.shape:
            raise ValueError(f"{name}.backward: expected dy of shape {out.shape}, got {tuple(dy.shape)}")
        if not input_grad:
            for t in list(ins) + list(kw.values()):
                if isinstance(t, Tensor):
                    t.requires_grad = False
        roots, more = self._array_roots(out, extra)
        if any(isinstance(t, Tensor) and t.requires_grad for t in roots):
            backward(roots, [dy] + list(more))
        return ins

    def _check_dtype(self, x, what: str) -> None:
        w = next(iter(p for p in self._parameters.values() if p is not None), None)
        if w is not None and x.dtype != w.dtype:
            raise TypeError(f"{what}: input dtype {x.dtype} does not match the parameters' {w.dtype}; "
                            f"cast the input (x.astype) or the model (model.to(dtype=...))")

    def _adopt(self, children) -> None:
        """Put param-free children on the device of the children holding state; refuse a mix."""
        stateful = [m for m in children if any(True for _ in m._state_entries())]
        devices = {m.backend for m in stateful}
        if len(devices) > 1:
            raise DeviceError(f"{type(self).__name__}: children live on different devices "
                              f"{sorted(b.name for b in devices)}; move them with .to(...) first")
        pool = stateful or list(children)
        if pool:
            target = pool[0].backend
            for m in children:
                if m.backend != target:
                    m.to(target)
            self.__dict__["_backend"] = target

    # --- printing ---

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, m in self._modules.items():
            lines.append("  (" + name + "): " + repr(m).replace("\n", "\n  "))
        return "\n".join(lines) + "\n)"
