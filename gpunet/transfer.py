"""Transfer learning and deployment helpers: freeze, partial loads, head replacement, per-group learning
rates, and batch-norm folding.

    report = load_pretrained(model, pretrained_state)        # loads what fits, reports the rest
    old = replace_head(model, num_classes=5)                 # a fresh Linear in place of the last one
    freeze(model, exclude=last_linear(model))                 # train the head only ...
    opt = finetune_optimizer(model, lr=1e-3, body_lr_scale=0.1)   # ... or everything, the body slower
    fast = fold_batchnorm(model)                             # eval copy with BN folded into conv/linear

Freezing is `param.requires_grad = False`: layers then skip that parameter's gradient (`Module._accumulate`),
optimizers skip it in `step()` (so no weight decay or momentum either), and clipping ignores it (its grad
is None). `freeze` also sets the momentum of every batch norm whose affine parameters are all frozen to 0,
so its running statistics stop drifting while training mode still normalises with batch statistics;
`unfreeze` restores it.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np

from gpunet.nn import BatchNorm2d, Conv2d, Identity, Linear, Module, Parameter, Sequential
from gpunet.nn.layers import _BatchNorm

# --- freezing ---------------------------------------------------------------------------------------


def _select(model: Module, include, exclude) -> list[tuple[str, Parameter]]:
    def match(name, prefixes):
        return any(name == p or name.startswith(p + ".") for p in prefixes)
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else (exclude or [])
    known = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    for p in list(include or []) + list(exclude):
        if p not in known:
            raise KeyError(f"freeze/unfreeze: {p!r} names no module or parameter of the model")
    return [(n, p) for n, p in model.named_parameters()
            if (include is None or match(n, include)) and not match(n, exclude)]


def freeze(model: Module, include=None, exclude=None) -> list[str]:
    """Freeze the parameters under the module/parameter names in `include` (default: all) except those under
    `exclude`; drop their gradients. Returns the frozen parameter names. See the module docstring."""
    chosen = _select(model, include, exclude)
    for _, p in chosen:
        p.requires_grad = False
        p.grad = None
    _sync_bn_momentum(model)
    return [n for n, _ in chosen]


def unfreeze(model: Module, include=None, exclude=None) -> list[str]:
    """Make the selected parameters trainable again (same selection rules as `freeze`)."""
    chosen = _select(model, include, exclude)
    for _, p in chosen:
        p.requires_grad = True
    _sync_bn_momentum(model)
    return [n for n, _ in chosen]


def _sync_bn_momentum(model: Module) -> None:
    for m in model.modules():
        if not isinstance(m, _BatchNorm) or not m.affine:
            continue
        frozen = not m.weight.requires_grad and not m.bias.requires_grad
        saved = "_momentum_before_freeze" in m.__dict__
        if frozen and not saved:
            m._momentum_before_freeze, m.momentum = m.momentum, 0.0
        elif not frozen and saved:
            m.momentum = m.__dict__.pop("_momentum_before_freeze")


def trainable_parameters(model: Module) -> list[Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# --- partial loads and heads ------------------------------------------------------------------------

@dataclass
class LoadReport:
    """What `load_pretrained` did: keys loaded, missing from the checkpoint, unexpected in it, and skipped
    for a shape mismatch (key -> (checkpoint shape, model shape))."""
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"missing from the checkpoint (left as initialised): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"in the checkpoint but not in the model (ignored): {', '.join(self.unexpected)}")
        for k, (got, want) in self.mismatched.items():
            lines.append(f"shape mismatch, skipped: {k} checkpoint {got} vs model {want}")
        return "\n".join(lines)


def load_pretrained(model: Module, state_dict, skip_mismatched: bool = True) -> LoadReport:
    """Load every entry of `state_dict` whose key and shape match the model (`load_state_dict(strict=False)`),
    skipping shape mismatches (a new head) instead of raising when `skip_mismatched`. Returns a LoadReport."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatched = {k: (tuple(np.shape(v)), shapes[k]) for k, v in state_dict.items()
                  if k in shapes and tuple(np.shape(v)) != shapes[k]}
    if mismatched and not skip_mismatched:
        k, (got, want) = next(iter(mismatched.items()))
        raise ValueError(f"load_pretrained: shape mismatch for {k!r}: checkpoint {got}, model {want} "
                         f"(pass skip_mismatched=True to leave such tensors as initialised)")
    keep = {k: v for k, v in state_dict.items() if k not in mismatched}
    missing, unexpected = model.load_state_dict(keep, strict=False)
    loaded = [k for k in shapes if k in keep]
    return LoadReport(loaded, [k for k in missing if k not in mismatched], list(unexpected), mismatched)


def _parent(model: Module, path: str) -> tuple[Module, str]:
    modules = dict(model.named_modules())
    if path not in modules or path == "":
        raise KeyError(f"replace_head: {path!r} names no submodule; submodules: "
                       f"{', '.join(n for n in modules if n) or 'none'}")
    parent, _, name = path.rpartition(".")
    return modules[parent], name


def last_linear(model: Module) -> str:
    """The name of the last Linear in traversal order (the classifier head of the usual models)."""
    names = [n for n, m in model.named_modules() if isinstance(m, Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear layer to act as a head; name one explicitly")
    return names[-1]


def replace_head(model: Module, num_classes: int | None = None, head: Module | None = None,
                 name: str | None = None) -> Module:
    """Put `head` (or, given num_classes, a fresh Linear(in_features, num_classes)) where the module `name`
    (default: the last Linear) was, on the model's device and dtype. Returns the old head."""
    name = last_linear(model) if name is None else name
    parent, attr = _parent(model, name)
    old = parent._modules[attr]
    if (head is None) == (num_classes is None):
        raise TypeError("replace_head: give exactly one of num_classes or head")
    if head is None:
        if not isinstance(old, Linear):
            raise TypeError(f"replace_head: {name!r} is a {type(old).__name__}; pass head=... to replace it")
        head = Linear(old.in_features, num_classes, bias=old.bias is not None)
    head.to(old.backend, next(iter(p.dtype for p in old.parameters()), None))
    setattr(parent, attr, head)  # same key: the state_dict order is kept
    return old


# --- one optimizer over parameter groups with their own learning-rate scales -----------------------------

class GroupedOptimizer:
    """Several optimizers stepped as one, each at `lr * scale` (PyTorch's per-group lr for our single-group
    optimizers). Exposes what the Trainer, the schedulers and clipping use: `lr` (the base; setting it
    rescales every group), `params`, `zero_grad`, `step`, `state_dict`/`load_state_dict`. The base starts
    as the first group's lr divided by its scale, and every group is set to base * scale."""

    def __init__(self, groups):
        self.groups = [(opt, float(scale)) for opt, scale in groups]
        if not self.groups:
            raise ValueError("GroupedOptimizer: needs at least one (optimizer, scale) group")
        base = self.groups[0][0].lr / self.groups[0][1]
        self.lr = base

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = float(value)
        for opt, scale in self.groups:
            opt.lr = self._lr * scale

    @property
    def params(self) -> list:
        return [p for opt, _ in self.groups for p in opt.params]

    def zero_grad(self) -> None:
        for opt, _ in self.groups:
            opt.zero_grad()

    def step(self) -> None:
        for opt, _ in self.groups:
            opt.step()

    def state_dict(self) -> dict:
        return {"lr": self._lr, "scales": [s for _, s in self.groups],
                "groups": [opt.state_dict() for opt, _ in self.groups]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["groups"]) != len(self.groups):
            raise ValueError(f"GroupedOptimizer.load_state_dict: saved {len(state['groups'])} groups, "
                             f"this optimizer has {len(self.groups)}")
        for (opt, _), st in zip(self.groups, state["groups"]):
            opt.load_state_dict(st)
        self.groups = [(opt, float(s)) for (opt, _), s in zip(self.groups, state["scales"])]
        self.lr = state["lr"]

    def __repr__(self) -> str:
        return f"GroupedOptimizer(lr={self._lr!r}, groups={[(repr(o), s) for o, s in self.groups]})"


def finetune_optimizer(model: Module, lr: float, body_lr_scale: float = 0.1, head: str | None = None,
                       optimizer=None, **hyper) -> GroupedOptimizer:
    """Head (default: the last Linear) at `lr`, the rest of the trainable parameters at `lr * body_lr_scale`.
    `optimizer` is a class such as optim.Adam (default) taking (params, lr=..., **hyper)."""
    from gpunet import optim
    cls = optimizer or optim.Adam
    head = last_linear(model) if head is None else head
    prefix = head + "."
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head_params = [p for n, p in named if n.startswith(prefix)]
    body_params = [p for n, p in named if not n.startswith(prefix)]
    if not head_params:
        raise ValueError(f"finetune_optimizer: {head!r} has no trainable parameters")
    groups = [(cls(head_params, lr=lr, **hyper), 1.0)]
    if body_params and body_lr_scale > 0:
        groups.append((cls(body_params, lr=lr * body_lr_scale, **hyper), body_lr_scale))
    return GroupedOptimizer(groups)


# --- batch-norm folding ------------------------------------------------------------------------------

@dataclass
class FoldReport:
    folded: list = field(default_factory=list)    # (layer name, batch-norm name)
    skipped: list = field(default_factory=list)   # (batch-norm name, reason)

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} batch norm(s): " + ", ".join(f"{b} into {c}" for c, b in self.folded)]
        lines += [f"kept {b}: {why}" for b, why in self.skipped]
        return "\n".join(lines)


def _copy_model(model: Module) -> Module:
    memo = {}  # share the devices, drop forward caches, copy everything else
    for m in model.modules():
        memo[id(m.backend)] = m.backend
        memo[id(m._cache)] = None
    return copy.deepcopy(model, memo)


def _fold_into(layer: Module, bn: _BatchNorm) -> None:
    """W' = W * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * gamma / sqrt(var + eps) + beta,
    computed in float64 on the host and stored in the layer's dtype on its device."""
    be, host = layer.backend, layer.backend.asnumpy
    dtype = layer.weight.dtype
    mean, var = host(bn.running_mean).astype(np.float64), host(bn.running_var).astype(np.float64)
    gamma = host(bn.weight.data).astype(np.float64) if bn.affine else np.ones_like(mean)
    beta = host(bn.bias.data).astype(np.float64) if bn.affine else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.eps)
    w = host(layer.weight.data).astype(np.float64)
    b = host(layer.bias.data).astype(np.float64) if layer.bias is not None else np.zeros_like(mean)
    layer.weight.data = be.asarray(w * scale.reshape((-1,) + (1,) * (w.ndim - 1)), dtype=dtype)
    new_b = be.asarray((b - mean) * scale + beta, dtype=dtype)
    if layer.bias is None:
        layer.bias = Parameter(new_b)
    else:
        layer.bias.data = new_b
    layer.weight.grad = layer.bias.grad = None


def fold_batchnorm(model: Module, return_report: bool = False):
    """A copy of `model` in eval mode with every foldable batch norm folded into the layer before it
    (BatchNorm2d after Conv2d, BatchNorm1d after Linear, adjacent in one Sequential) and replaced by Identity,
    so module names, and the state_dict keys of everything else, stay as they were. Equal to the original
    in eval mode up to rounding. A batch norm that cannot be folded is kept and reported (with a warning
    unless return_report=True, which returns (model, FoldReport)): after a fused conv+ReLU (BN(relu(Wx + b))
    is not affine in Wx + b), or after anything other than a Conv2d/Linear."""
    folded_model = _copy_model(model).eval()
    report = FoldReport()
    seen = set()
    for prefix, seq in folded_model.named_modules():
        if not isinstance(seq, Sequential):
            continue
        names = list(seq._modules)
        for i, name in enumerate(names):
            bn = seq._modules[name]
            if not isinstance(bn, _BatchNorm):
                continue
            bn_name = f"{prefix}.{name}" if prefix else name
            seen.add(id(bn))
            prev_name = names[i - 1] if i > 0 else None
            prev = seq._modules[prev_name] if prev_name is not None else None
            prev_full = f"{prefix}.{prev_name}" if prefix else prev_name
            want = Conv2d if isinstance(bn, BatchNorm2d) else Linear
            if prev is None or not isinstance(prev, want):
                what = "nothing (first in its Sequential)" if prev is None else f"{type(prev).__name__} {prev_full!r}"
                report.skipped.append((bn_name, f"follows {what}, not a {want.__name__}"))
            elif getattr(prev, "activation", None) == "relu":
                report.skipped.append((bn_name, f"follows Conv2d {prev_full!r} with a fused ReLU: BN(relu(conv)) "
                                                f"is not affine in the conv output, so it cannot be folded"))
            else:
                _fold_into(prev, bn)
                setattr(seq, name, Identity().to(bn.backend).eval())
                report.folded.append((prev_full, bn_name))
    for name, m in folded_model.named_modules():
        if isinstance(m, _BatchNorm) and id(m) not in seen:
            report.skipped.append((name, "not inside a Sequential, so its producer is unknown"))
    if return_report:
        return folded_model, report
    if report.skipped:
        warnings.warn("fold_batchnorm: " + "; ".join(f"kept {b}: {why}" for b, why in report.skipped),
                      RuntimeWarning, stacklevel=2)
    return folded_model
