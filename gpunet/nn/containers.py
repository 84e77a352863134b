"""Containers: Sequential (a chain), Residual (body(x) + shortcut(x)), Concat (branches joined on channels).

Forward only composes the children's forwards; the recorded nodes give the backward (gradients of an
input that fans out add up).
On construction a container puts parameter-free children on the device of the children holding
weights, and refuses children whose weights live on different devices.
"""
from __future__ import annotations

from collections import OrderedDict

from gpunet.autograd import concatenate
from gpunet.autograd import functions as N
from gpunet.nn.module import Module


class Sequential(Module):
    """Apply modules in order. Children are named "0", "1", ... (or by the keys of one OrderedDict)."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: child {name!r} is {type(m).__name__}, not a Module")
            setattr(self, name, m)
        self._adopt(list(self._modules.values()))

    def append(self, module: Module) -> "Sequential":
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.append: expected a Module, got {type(module).__name__}")
        setattr(self, str(len(self)), module)
        self._adopt(list(self._modules.values()))
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        mods = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*mods[index])
        return mods[index]

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class Residual(Module):
    """y = activation(body(x) + shortcut(x)); the shortcut is the identity when None.
    activation: None or "relu" (the ResNet block's post-addition ReLU)."""

    def __init__(self, body: Module, shortcut: Module | None = None, activation: str | None = None):
        super().__init__()
        if activation not in (None, "relu"):
            raise ValueError(f"Residual: activation must be None or 'relu', got {activation!r}")
        self.body = body
        if shortcut is not None:
            self.shortcut = shortcut
        self.activation = activation
        self._adopt(list(self._modules.values()))

    def forward(self, x):
        self._backend.check(x.storage, "Residual input")
        b = self.body(x)
        s = x if "shortcut" not in self._modules else self.shortcut(x)
        if b.shape != s.shape:
            what = "shortcut" if "shortcut" in self._modules else "input (identity shortcut)"
            raise ValueError(f"Residual: body output {tuple(b.shape)} does not match {what} {tuple(s.shape)}; "
                             f"give a shortcut that maps the input to the body's output shape")
        return N.AddReLU()(b, s) if self.activation == "relu" else b + s

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}" if self.activation else ""


class Concat(Module):
    """Run every branch on the same input and concatenate the outputs on axis 1 (channels, Inception style).
    Branches are named "0", "1", ..."""

    def __init__(self, *branches: Module):
        super().__init__()
        if not branches:
            raise ValueError("Concat: needs at least one branch")
        for i, m in enumerate(branches):
            if not isinstance(m, Module):
                raise TypeError(f"Concat: branch {i} is {type(m).__name__}, not a Module")
            setattr(self, str(i), m)
        self._adopt(list(branches))

    def forward(self, x):
        self._backend.check(x.storage, "Concat input")
        outs = [m(x) for m in self._modules.values()]
        ref = outs[0].shape
        for i, o in enumerate(outs[1:], 1):
            if o.ndim != len(ref) or o.ndim < 2 or o.shape[:1] + o.shape[2:] != ref[:1] + ref[2:]:
                raise ValueError(f"Concat: branch {i} output {tuple(o.shape)} does not match branch 0 output "
                                 f"{tuple(ref)} outside the channel axis 1")
        return concatenate(outs, axis=1)
