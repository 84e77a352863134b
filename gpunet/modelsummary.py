"""`gpunet.summary(model, input_shape)`: per module its path, type, output shape, parameters (trainable and
frozen), multiply-adds and the activation memory one training step keeps, with totals.

Multiply-adds follow torchinfo's convention (so the two agree on the PyTorch twin of a model): a layer with
weights costs, per sample, one multiply-add per parameter, times the output positions for a convolution
and times the time steps for a recurrent layer; a Linear layer counts every row of its input. Layers
without weights (pools, activations, reshapes) and Embedding (a lookup) count 0.

Activation memory is measured, not estimated: one training-mode forward is traced and the arrays each
autograd node saved for its backward are counted once per buffer (weights excluded), in bytes. The
model's weights, buffers and dropout counters are restored afterwards.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet.autograd import Tensor, enable_grad
from gpunet.tracing import tensors_of, trace


class Summary:
    """The table `summary` returns: `rows` (dicts, one per module call) and `totals`; print it or `.to_dict()`."""

    COLUMNS = ("path", "type", "output_shape", "trainable", "frozen", "mult_adds", "activation_bytes")

    def __init__(self, rows: list[dict], totals: dict):
        self.rows, self.totals = rows, totals

    def to_dict(self) -> dict:
        return {"rows": [dict(r) for r in self.rows], "totals": dict(self.totals)}

    def totals_line(self) -> str:
        t = self.totals
        return (f"{t['trainable'] + t['frozen']:,} parameters ({t['trainable']:,} trainable, {t['frozen']:,} "
                f"frozen), {t['mult_adds']:,} multiply-adds per batch of {t['batch_size']}, "
                f"{_mib(t['activation_bytes'])} of activations kept per training step")

    def __str__(self) -> str:
        head = ("module", "type", "output shape", "trainable", "frozen", "mult-adds", "activations")
        body = [("  " * r["depth"] + (r["path"] or "(model)"), r["type"], str(tuple(r["output_shape"])),
                 f"{r['trainable']:,}", f"{r['frozen']:,}", f"{r['mult_adds']:,}", _mib(r["activation_bytes"]))
                for r in self.rows]
        widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]

        def fmt(line):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        rule = "-" * len(fmt(head))
        return "\n".join([fmt(head), rule] + [fmt(b) for b in body] + [rule, "total: " + self.totals_line()])

    __repr__ = __str__


def _mib(n: int) -> str:
    """Bytes in the largest unit that keeps a number >= 1 (B, KiB, MiB, GiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _mult_adds(module, out_shape) -> int:
    """torchinfo's count for one call of a module with its own weights (see the module docstring)."""
    from gpunet import nn
    own = [p for p in module._parameters.values() if p is not None]
    n = sum(int(p.size) for p in own)
    if not own or isinstance(module, nn.Embedding) or not out_shape:
        return 0
    if isinstance(module, nn.Conv2d):
        return n * out_shape[0] * math.prod(out_shape[2:])
    if isinstance(module, (nn.RNN, nn.GRU, nn.LSTM)):
        return n * math.prod(out_shape[:2])
    if isinstance(module, nn.Linear):
        return n * math.prod(out_shape[:-1])
    return n * out_shape[0]


def _saved_arrays(node, skip: set, depth: int = 0):
    """The arrays a node keeps for backward: its attributes, looking into tuples, dicts and small cache objects."""
    values = node.values() if isinstance(node, dict) else (
        node if isinstance(node, (tuple, list)) else getattr(node, "__dict__", {}).values())
    for v in values:
        if hasattr(v, "nbytes") and hasattr(v, "dtype"):
            if id(v) not in skip:
                yield v
        elif depth < 2 and isinstance(v, (tuple, list, dict)) or (
                depth < 1 and type(v).__module__.startswith("gpunet.ops") and hasattr(v, "__dict__")):
            yield from _saved_arrays(v, skip, depth + 1)


def _owner(a):
    """The buffer behind an array (views share their base's memory)."""
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
        a = a.base
    return a


def summary(model, input_shape, batch_size: int = 1, dtype=np.float32) -> Summary:
    """Trace one training-mode forward of `model` on random inputs of shape (batch_size, *input_shape) (a list
    of shapes for several inputs; integer dtypes draw ids in [0, 2)) and tabulate every module call. Batch norm
    needs more than one value per channel in training mode: give a batch_size of 2 or more for BatchNorm1d."""
    shapes = [tuple(input_shape)] if all(isinstance(s, (int, np.integer)) for s in input_shape) else [
        tuple(s) for s in input_shape]
    if int(batch_size) < 1:
        raise ValueError(f"summary: batch_size must be >= 1, got {batch_size}")
    be = model.backend
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    host = [rng.integers(0, 2, (batch_size,) + s) if dt.kind in "iu" else
            rng.standard_normal((batch_size,) + s).astype(dt) for s in shapes]
    inputs = [Tensor(be.asarray(h), backend=be) for h in host]

    state = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    counters = {id(m): m.counter for m in model.modules() if hasattr(m, "counter")}
    was_training = model.training
    params = {id(p): p for p in model.parameters()}
    skip = {id(p.data) for p in params.values()} | {id(b) for _, b in model.named_buffers()}
    try:
        model.train()
        with enable_grad(), trace(model) as rec:
            model(*inputs)
    finally:
        model.load_state_dict(state)
        for m in model.modules():
            if id(m) in counters:
                m.counter = counters[id(m)]
        model.train(was_training)

    counted, seen_params, rows = set(), set(), []
    for call in rec.modules:
        m = call.module
        own = [p for p in m._parameters.values() if p is not None and id(p) not in seen_params]
        seen_params.update(id(p) for p in own)  # a module called twice counts its weights once
        outs = tensors_of(call.output)
        out_shape = outs[0].shape if outs else ()
        saved = 0
        for nc in call.nodes:
            for a in _saved_arrays(nc.node, skip):
                key = id(_owner(a))
                if key not in counted:
                    counted.add(key)
                    saved += int(_owner(a).nbytes)
        rows.append({"path": call.path, "type": type(m).__name__, "depth": call.depth,
                     "output_shape": list(out_shape),
                     "trainable": sum(int(p.size) for p in own if p.requires_grad),
                     "frozen": sum(int(p.size) for p in own if not p.requires_grad),
                     "mult_adds": _mult_adds(m, out_shape), "activation_bytes": saved})
    totals = {key: sum(r[key] for r in rows) for key in ("mult_adds", "activation_bytes")}
    totals["trainable"] = sum(int(p.size) for p in params.values() if p.requires_grad)  # modules not called too
    totals["frozen"] = sum(int(p.size) for p in params.values() if not p.requires_grad)
    totals["batch_size"] = int(batch_size)
    return Summary(rows, totals)
