"""Record one forward: every module call (path, type, output) and every autograd node call (the node, its input
and output tensors, the module that ran it). `gpunet.summary` and `gpunet.onnx` read these records.

This is the one place that reaches into the autograd and the module machinery: during `trace` it wraps
`Node.__call__` (so nodes are seen whether or not grad mode records them, constants included) and each
module's `forward` (an instance attribute, removed afterwards). Nothing changes once the block ends. The patch
is process-wide for the block's duration: trace from one thread at a time.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from gpunet.autograd import Node, Tensor


@dataclass
class ModuleCall:
    path: str          # the state-dict prefix ("" for the root)
    module: object
    depth: int
    output: object = None
    nodes: list = field(default_factory=list)  # NodeCalls made while this was the innermost module


@dataclass
class NodeCall:
    node: Node
    inputs: tuple      # what the node was called with (Tensors, arrays or numbers)
    outputs: tuple     # its output Tensors
    path: str          # the innermost module path running when it was recorded


@dataclass
class Trace:
    modules: list = field(default_factory=list)   # ModuleCalls in call order (parents before children)
    nodes: list = field(default_factory=list)     # NodeCalls in execution order


@contextlib.contextmanager
def trace(model):
    """Within the block, calls of `model` (and its submodules) and of every Node are appended to the
    yielded Trace."""
    rec, stack = Trace(), []
    original_call = Node.__call__

    def node_call(node, *inputs):
        outs = original_call(node, *inputs)
        call = NodeCall(node, inputs, outs if isinstance(outs, tuple) else (outs,), stack[-1].path if stack else "")
        rec.nodes.append(call)
        if stack:
            stack[-1].nodes.append(call)
        return outs

    def wrap(path, module):
        forward = type(module).forward.__get__(module)

        def traced_forward(*args, **kwargs):
            call = ModuleCall(path, module, len(stack))
            rec.modules.append(call)
            stack.append(call)
            try:
                call.output = forward(*args, **kwargs)
            finally:
                stack.pop()
            return call.output
        return traced_forward

    wrapped = []
    Node.__call__ = node_call
    try:
        for path, m in model.named_modules():
            if "forward" not in m.__dict__:   # a module reached twice (shared) is wrapped once, by its first path
                m.__dict__["forward"] = wrap(path, m)
                wrapped.append(m)
        yield rec
    finally:
        Node.__call__ = original_call
        for m in wrapped:
            m.__dict__.pop("forward", None)


def tensors_of(value) -> list:
    """The Tensors in a module output (a Tensor or a tuple of them)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_of(v)]
    return []
