"""`export(model, example_input, path)`: an ONNX model traced from the define-by-run graph of one eval forward
(`pip install 'gpunet[onnx]'`).

Every autograd node the forward records (gpunet.tracing) maps to ONNX ops, so any model written from
gpunet's layers and tensor operations exports, not only the built-in ones:

    Conv2d (fused ReLU)      Conv (+ Relu)               Linear           Gemm (transB=1)
    BatchNorm (eval)         BatchNormalization (inference form, running statistics; not folded: ONNX
                             Runtime folds it into the conv itself when it loads the model)
    MaxPool2d / AvgPool2d    MaxPool / AveragePool (count_include_pad=1)
    GlobalAvgPool2d          GlobalAveragePool + Flatten
    + - * / ** @, neg        Add Sub Mul Div Pow MatMul Neg
    exp log sqrt tanh sigmoid relu, LeakyReLU, PReLU, ELU     Exp Log Sqrt Tanh Sigmoid Relu LeakyRelu PRelu Elu
    sum mean max             ReduceSum ReduceMean ReduceMax
    reshape transpose        Reshape Transpose;  t[...]: Slice, Gather (ints, one index array), Unsqueeze (None)
    concatenate stack        Concat (after Unsqueeze for stack)
    Residual's add+ReLU      Add + Relu
    Embedding                Gather on the weight
    RNN / GRU / LSTM         ONNX's RNN / GRU (linear_before_reset=1) / LSTM, one per layer: their equations are
                             PyTorch's, which gpunet's are; gates reordered by Gather on the weights
    Dropout                  nothing (eval mode records no node)

A node with no mapping (a loss, a training-mode batch norm, a Node of your own) is an error naming the node and
the module path where it was recorded. Initializers keep the state-dict names (weights are copied to the host,
whatever device the model lives on); other constants of the graph are named const_<k>.

The batch axis is dynamic: the forward is traced twice, at two batch sizes and with other input values, and
the two graphs must be identical. A value computed outside the graph (array maths on `.data`), which would
be frozen into the file as a constant, or a shape tied to the batch size, is reported with its module path.
A constant whose rows are all equal along a batch-sized first axis (a zero initial state) is emitted as
one row expanded to the batch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gpunet.atomic import atomic_write
from gpunet.autograd import Tensor, no_grad
from gpunet.backend import to_host
from gpunet.tracing import tensors_of, trace

MIN_OPSET = 17
INSTALL = "pip install 'gpunet[onnx]'"
_INT64_MAX, _INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


class ExportError(ValueError):
    """The model cannot be expressed in ONNX as traced (an operation without a mapping, a graph that depends
    on the batch size or on the input values)."""


def require_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs the onnx package ({e}); install it with: {INSTALL}") from None
    return onnx


# --- the graph under construction -------------------------------------------------------------------------

class _Graph:
    """ONNX nodes and initializers, and the ONNX name of every traced value (by the identity of its Tensor or
    array)."""

    def __init__(self, onnx, opset, model, batch: int, first_input: str, dynamic: bool):
        self.onnx, self.opset, self.batch, self.first_input, self.dynamic = onnx, opset, batch, first_input, dynamic
        self.nodes, self.node_paths, self.inits = [], [], {}
        self.names: dict[int, str] = {}      # id(Tensor or array) -> value name
        self.sources: dict[str, object] = {}  # state-dict name -> array, added as an initializer on first use
        self.path = ""
        self._k = 0
        for name, p in model.named_parameters():
            self.names.setdefault(id(p), name)
            self.names.setdefault(id(p.data), name)
            self.sources[name] = p.data
        for name, b in model.named_buffers():
            self.names.setdefault(id(b), name)
            self.sources[name] = b
        self._batch_shape = None

    def fresh(self, hint: str) -> str:
        self._k += 1
        return f"{hint}_{self._k}"

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        outs = [self.fresh(op_type) for _ in range(n_out)]
        node = self.onnx.helper.make_node(op_type, list(inputs), outs, name=f"{self.path or 'model'}/{outs[0]}",
                                          **attrs)
        self.nodes.append(node)
        self.node_paths.append(self.path)
        return outs if n_out > 1 else outs[0]

    def const(self, array, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.inits[name] = self.onnx.numpy_helper.from_array(np.array(array, order="C"), name)  # keeps 0-d
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "ints")

    def value(self, x) -> str:
        """The name of a node input: a traced value, a state-dict entry, else a constant."""
        key = id(x)
        if key not in self.names and isinstance(x, Tensor):
            key = id(x.data) if id(x.data) in self.names else key
        if key in self.names:
            name = self.names[key]
            if name in self.sources and name not in self.inits:
                self.inits[name] = self.onnx.numpy_helper.from_array(
                    np.array(to_host(self.sources[name]), order="C"), name)
            return name
        return self.constant(x.data if isinstance(x, Tensor) else x)

    def constant(self, data) -> str:
        a = np.asarray(to_host(data))
        if (self.dynamic and a.ndim >= 1 and self.batch > 1 and a.shape[0] == self.batch
                and bool((a == a[:1]).all())):
            return self.op("Expand", [self.const(a[:1]), self.batch_shape(a.shape[1:])])
        return self.const(a)

    def batch_shape(self, rest) -> str:
        """[N, *rest] with N read from the first input at run time."""
        if self._batch_shape is None:
            shape = self.op("Shape", [self.first_input])
            self._batch_shape = self.op("Slice", [shape, self.ints([0]), self.ints([1])])
        return self.op("Concat", [self._batch_shape, self.ints(list(rest))], axis=0)

    def reduce(self, op_type: str, x: str, axes, keepdims: bool) -> str:
        """Reductions take axes as an input from opset 13 (ReduceSum) or 18 (the others)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=list(axes), keepdims=int(keepdims))


# --- one handler per node type: (graph, node, input names, NodeCall) -> output name(s) ------------------

def _elementwise(op_type):
    return lambda g, node, ins, call: g.op(op_type, ins)


def _pow(g, node, ins, call):
    return g.op("Pow", [ins[0], g.const(np.asarray(node.c, dtype=call.inputs[0].dtype))])


def _reduce(op_type):
    def handler(g, node, ins, call):
        return g.reduce(op_type, ins[0], node.axes, node.keepdims)
    return handler


def _reshape(g, node, ins, call):
    target = [int(s) for s in node.shape]
    if target and g.dynamic and node.x_shape:
        if -1 not in target:
            target[0] = -1            # the leading axis scales with the batch: let Reshape infer it
        elif target[0] == node.x_shape[0]:
            target[0] = 0             # copy the batch axis from the input
    return g.op("Reshape", [ins[0], g.ints(target)])


def _transpose(g, node, ins, call):
    return g.op("Transpose", ins, perm=[int(a) for a in node.axes])


def _getitem(g, node, ins, call):
    key = node.key if isinstance(node.key, tuple) else (node.key,)
    ndim = len(node.x_shape)
    consumed = sum(1 for k in key if k is not None and k is not Ellipsis)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - consumed) + key[i + 1:]
    key = key + (slice(None),) * (ndim - sum(1 for k in key if k is not None))
    arrays = [k for k in key if hasattr(k, "dtype") or isinstance(k, (list, np.ndarray))]
    if len(arrays) > 1:
        raise ExportError(f"export: indexing with {len(arrays)} index arrays (recorded in {g.path or 'the model'}) "
                          f"has no ONNX mapping; index with one integer array, ints and slices")
    x, axis, starts, ends, axes, steps, gathers, news = ins[0], 0, [], [], [], [], [], []
    out_axis = 0
    for k in key:
        if k is None:
            news.append(out_axis)
            out_axis += 1
            continue
        if isinstance(k, slice):
            if not (k.start is None and k.stop is None and k.step in (None, 1)):
                step = 1 if k.step is None else int(k.step)
                starts.append(int(k.start) if k.start is not None else (0 if step > 0 else -1))
                ends.append(int(k.stop) if k.stop is not None else (_INT64_MAX if step > 0 else _INT64_MIN))
                axes.append(axis)
                steps.append(step)
            out_axis += 1
        elif isinstance(k, (int, np.integer)):
            gathers.append((axis, int(k)))
        else:
            idx = np.asarray(to_host(k))
            if idx.dtype == bool:
                raise ExportError(f"export: boolean-mask indexing (recorded in {g.path or 'the model'}) has no "
                                  f"static ONNX shape; use integer indices")
            gathers.append((axis, idx.astype(np.int64)))
            out_axis += idx.ndim
        axis += 1
    if axes:
        x = g.op("Slice", [x, g.ints(starts), g.ints(ends), g.ints(axes), g.ints(steps)])
    for ax, index in sorted(gathers, key=lambda t: -t[0]):  # highest axis first: lower axes keep their numbers
        x = g.op("Gather", [x, g.const(np.asarray(index, dtype=np.int64), "index")], axis=ax)
    if news:
        x = g.op("Unsqueeze", [x, g.ints(news)])
    return x


def _concat(g, node, ins, call):
    return g.op("Concat", ins, axis=int(node.axis))


def _stack(g, node, ins, call):
    axis = int(node.axis) % (call.inputs[0].ndim + 1)
    return g.op("Concat", [g.op("Unsqueeze", [x, g.ints([axis])]) for x in ins], axis=axis)


def _conv(g, node, ins, call):
    w = call.inputs[1]
    (sh, sw), (ph, pw) = node.stride, node.padding
    y = g.op("Conv", ins, kernel_shape=list(w.shape[2:]), strides=[sh, sw], pads=[ph, pw, ph, pw])
    return g.op("Relu", [y]) if node.relu else y


def _linear(g, node, ins, call):
    return g.op("Gemm", ins, transB=1)


def _batch_norm_eval(g, node, ins, call):
    return g.op("BatchNormalization", ins + [g.value(node.rm), g.value(node.rv)], epsilon=float(node.eps))


def _pool(op_type, **extra):
    def handler(g, node, ins, call):
        (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
        return g.op(op_type, ins, kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw], **extra)
    return handler


def _global_avg_pool(g, node, ins, call):
    return g.op("Flatten", [g.op("GlobalAveragePool", ins)], axis=1)


def _add_relu(g, node, ins, call):
    return g.op("Relu", [g.op("Add", ins)])


def _leaky_relu(g, node, ins, call):
    return g.op("LeakyRelu", ins, alpha=float(node.slope))


def _elu(g, node, ins, call):
    return g.op("Elu", ins, alpha=float(node.alpha))


def _prelu(g, node, ins, call):
    x, w = call.inputs
    if w.size == 1:
        return g.op("PRelu", ins)
    slope = g.op("Reshape", [ins[1], g.ints([w.size] + [1] * (x.ndim - 2))])  # one slope per channel (axis 1)
    return g.op("PRelu", [ins[0], slope])


def _embedding(g, node, ins, call):
    return g.op("Gather", ins, axis=0)


# PyTorch's (and gpunet's) gate order -> ONNX's
_GATE_ORDER = {"RNN": [0], "GRU": [1, 0, 2], "LSTM": [0, 3, 1, 2]}


def _recurrence(g, node, ins, call):
    m = node.m
    kind, hid, lstm = m._kind, m.hidden_size, m._kind == "LSTM"
    nstate = 2 if lstm else 1
    rows = np.concatenate([np.arange(b * hid, (b + 1) * hid) for b in _GATE_ORDER[kind]]).astype(np.int64)
    attrs = {"hidden_size": hid}
    if kind == "RNN":
        attrs["activations"] = ["Tanh" if m.nonlinearity == "tanh" else "Relu"]
    if kind == "GRU":
        attrs["linear_before_reset"] = 1
    states = [ins[1 + i] for i in range(nstate)]  # None: a zero state (none given), ONNX's default
    per = 4 if m.bias else 2
    weights = ins[1 + nstate:]
    seq = g.op("Transpose", [ins[0]], perm=[1, 0, 2])  # (T, N, F): ONNX's default layout
    h_n, c_n = [], []
    for layer in range(m.num_layers):
        w = weights[layer * per:(layer + 1) * per]

        def gates(name):
            return g.op("Gather", [name, g.const(rows, "gate_rows")], axis=0)
        W = g.op("Unsqueeze", [gates(w[0]), g.ints([0])])
        R = g.op("Unsqueeze", [gates(w[1]), g.ints([0])])
        B = g.op("Unsqueeze", [g.op("Concat", [gates(w[2]), gates(w[3])], axis=0), g.ints([0])]) if m.bias else ""
        layer_states = [("" if s is None else g.op("Slice", [s, g.ints([layer]), g.ints([layer + 1]), g.ints([0])]))
                        for s in states]
        outs = g.op(kind, [seq, W, R, B, ""] + layer_states, n_out=3 if lstm else 2, **attrs)
        seq = g.op("Squeeze", [outs[0], g.ints([1])])  # (T, 1, N, H) -> (T, N, H)
        h_n.append(outs[1])
        if lstm:
            c_n.append(outs[2])
    y = g.op("Transpose", [seq], perm=[1, 0, 2])
    outs = [y, h_n[0] if len(h_n) == 1 else g.op("Concat", h_n, axis=0)]
    if lstm:
        outs.append(c_n[0] if len(c_n) == 1 else g.op("Concat", c_n, axis=0))
    return outs


def _zero_states(g, call):
    """Input indices of zero initial states the module made itself: left out of the ONNX op, not named."""
    nstate = 2 if call.node.m._kind == "LSTM" else 1
    states = [(i, call.inputs[i]) for i in range(1, 1 + nstate)]
    return {i for i, s in states if isinstance(s, Tensor) and id(s) not in g.names and not s.requires_grad
            and not bool(np.asarray(to_host(s.data)).any())}


_recurrence.unnamed = _zero_states

HANDLERS = {
    "Add": _elementwise("Add"), "Sub": _elementwise("Sub"), "Mul": _elementwise("Mul"), "Div": _elementwise("Div"),
    "Neg": _elementwise("Neg"), "Pow": _pow, "MatMul": _elementwise("MatMul"),
    "Sum": _reduce("ReduceSum"), "Mean": _reduce("ReduceMean"), "Max": _reduce("ReduceMax"),
    "Reshape": _reshape, "Transpose": _transpose, "GetItem": _getitem, "Concatenate": _concat, "Stack": _stack,
    "Exp": _elementwise("Exp"), "Log": _elementwise("Log"), "Sqrt": _elementwise("Sqrt"),
    "Tanh": _elementwise("Tanh"), "Sigmoid": _elementwise("Sigmoid"), "ReLU": _elementwise("Relu"),
    "Conv2d": _conv, "Linear": _linear, "BatchNormEval": _batch_norm_eval,
    "MaxPool2d": _pool("MaxPool"), "AvgPool2d": _pool("AveragePool", count_include_pad=1),
    "GlobalAvgPool2d": _global_avg_pool, "AddReLU": _add_relu, "LeakyReLU": _leaky_relu, "PReLU": _prelu,
    "ELU": _elu, "Embedding": _embedding, "Recurrence": _recurrence,
}


# --- tracing and building ---------------------------------------------------------------------------------

def _build(onnx, model, arrays, opset: int, dynamic: bool):
    """Trace one eval forward on `arrays` (host) and turn it into (nodes, initializers, node paths, input
    names, output names, output shapes)."""
    be = model.backend
    tensors = [Tensor(be.asarray(a), backend=be) for a in arrays]
    with no_grad(), trace(model) as rec:
        out = model(*tensors)
    outputs = tensors_of(out)
    if not outputs:
        raise ExportError(f"export: {type(model).__name__} returned {type(out).__name__}, not Tensors")
    in_names = ["input"] if len(tensors) == 1 else [f"input{i}" for i in range(len(tensors))]
    g = _Graph(onnx, opset, model, arrays[0].shape[0] if arrays[0].ndim else 0, in_names[0], dynamic)
    for t, name in zip(tensors, in_names):
        g.names[id(t)] = g.names[id(t.data)] = name
    for call in rec.nodes:
        node, g.path = call.node, call.path
        handler = HANDLERS.get(type(node).__name__)
        if handler is None:
            where = f"module {call.path!r}" if call.path else "the model's own forward"
            raise ExportError(f"export: no ONNX mapping for the operation {node.name} recorded in {where}; "
                              f"supported: {', '.join(sorted(HANDLERS))}")
        skip = getattr(handler, "unnamed", lambda g, call: ())(g, call)
        ins = [None if i in skip else g.value(x) for i, x in enumerate(call.inputs)]
        outs = handler(g, node, ins, call)
        for t, name in zip(call.outputs, outs if isinstance(outs, list) else [outs]):
            g.names[id(t)] = name
    g.path = ""
    out_names = ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
    for t, name in zip(outputs, out_names):
        g.nodes.append(onnx.helper.make_node("Identity", [g.value(t)], [name], name=f"model/{name}"))
        g.node_paths.append("")
    return g, in_names, out_names, [t.shape for t in outputs], [t.dtype for t in outputs]


def _variants(arrays, dynamic: bool):
    """Two sets of inputs: the first is exported; the second, with other values (and one more row when the batch
    is dynamic), must give the same graph."""
    rng = np.random.default_rng(0)
    n = arrays[0].shape[0]
    na = max(2, n) if dynamic else n
    nb = na + 1 if dynamic else n

    def rows(a, k):
        return a[np.arange(k) % n]

    def other(a):
        if a.dtype.kind in "iu":  # ids: the same values in another order
            return rng.permutation(a.ravel()).reshape(a.shape) if a.size > 1 else a
        return (a + rng.standard_normal(a.shape) * (float(np.std(a)) + 0.5)).astype(a.dtype)
    return [rows(a, na) for a in arrays], [other(rows(a, nb)) for a in arrays]


def export(model, example_input, path, opset: int | None = None, dynamic_batch: bool = True,
           metadata: dict | None = None) -> Path:
    """Write `model` (traced in eval mode on `example_input`: an array or Tensor, or a tuple of them for several
    inputs, batch first) to `path` as ONNX, checked with `onnx.checker.check_model(full_check=True)`.
    `dynamic_batch` names the first axis of inputs and outputs "batch"; `metadata` (str -> str) goes into the
    model's metadata_props. Returns the path."""
    onnx = require_onnx()
    top = onnx.defs.onnx_opset_version()
    opset = MIN_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= top:
        raise ValueError(f"export: opset must lie in [{MIN_OPSET}, {top}] (this onnx {onnx.__version__}), got {opset}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    arrays = [np.asarray(to_host(x.data if isinstance(x, Tensor) else x)) for x in inputs]
    if any(a.ndim == 0 for a in arrays) or len({a.shape[0] for a in arrays}) != 1:
        raise ValueError(f"export: every example input needs the same batch axis first, got shapes "
                         f"{[a.shape for a in arrays]}")
    was_training = model.training
    model.eval()
    try:
        first, second = _variants(arrays, dynamic_batch)
        g, in_names, out_names, out_shapes, out_dtypes = _build(onnx, model, first, opset, dynamic_batch)
        g2, _, _, out_shapes2, _ = _build(onnx, model, second, opset, dynamic_batch)
    finally:
        model.train(was_training)
    _same_graph(g, g2)

    def info(name, shape_a, shape_b, dtype):
        dims = ["batch" if a != b else int(a) for a, b in zip(shape_a, shape_b)]
        return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims)
    graph = onnx.helper.make_graph(
        g.nodes, type(model).__name__,
        [info(n, a.shape, b.shape, a.dtype) for n, a, b in zip(in_names, first, second)],
        [info(n, a, b, dt) for n, a, b, dt in zip(out_names, out_shapes, out_shapes2, out_dtypes)],
        initializer=list(g.inits.values()))
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="gpunet")
    onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in (metadata or {}).items()})
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return path


def _same_graph(a: _Graph, b: _Graph) -> None:
    """Both traces must give the same nodes and constants, else name where they part."""
    for i, (na, nb) in enumerate(zip(a.nodes, b.nodes)):
        same_consts = all(a.inits.get(x) == b.inits.get(x) for x in na.input if x in a.inits or x in b.inits)
        if na != nb or not same_consts:
            where = f"module {a.node_paths[i]!r}" if a.node_paths[i] else "the model's own forward"
            raise ExportError(
                f"export: the graph changes with the input values or the batch size at {where} ({na.op_type}): a "
                f"value computed outside the graph (array maths on .data, a constant shaped by the batch) would be "
                f"frozen into the file; compute it with tensor operations"
                f"{', or pass dynamic_batch=False if the batch size is fixed' if a.dynamic else ''}")
    if len(a.nodes) != len(b.nodes) or a.inits.keys() != b.inits.keys():
        raise ExportError("export: the graph changes with the input values or the batch size (a different number "
                          "of operations); the model's forward must not branch on its input")


__all__ = ["export", "ExportError", "MIN_OPSET"]
