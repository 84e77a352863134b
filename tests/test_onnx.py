"""ONNX export: every built-in model and the user-written models of the autograd issue (a layer shared twice, two
inputs, attention from tensor operations, a user RNN loop), recurrent layers and the other mapped layers are
exported, checked by onnx.checker (full_check) and run by ONNX Runtime's CPU provider at another batch size than
the traced one; outputs agree with gpunet's eval forward within 1e-5 relative (max |diff| / max |ref|, float32)
and predictions on the digits test split are identical."""
import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.autograd import Node
from gpunet.cli.main import main
from gpunet.models import MODELS, build_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from gpunet.onnx import ExportError, export  # noqa: E402

RTOL = 1e-5
SHAPES = {"cnn": (1, 8, 8), "lenet": (1, 28, 28), "lenet5-classic": (1, 28, 28), "vgg": (3, 32, 32), "alexnet": (1, 28, 28),
          "inception": (1, 8, 8), "resnet-small": (3, 32, 32), "mlp": (1, 8, 8)}


def run_onnx(path, *arrays):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, arrays)))


def reference(model, *arrays):
    model.eval()
    with gpunet.no_grad():
        out = model(*[gpunet.tensor(a, backend=model.backend) for a in arrays])
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def rel_diff(ours, theirs) -> float:
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(ours)), 1e-30))


def check_export(tmp_path, model, example, run_with=None):
    """Export on `example`, run ORT on `run_with` (other batch size), compare with gpunet."""
    example = example if isinstance(example, tuple) else (example,)
    run_with = run_with if run_with is not None else example
    run_with = run_with if isinstance(run_with, tuple) else (run_with,)
    path = export(model, example, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    for out, ref in zip(run_onnx(path, *run_with), reference(model, *run_with)):
        assert out.shape == ref.shape
        assert rel_diff(ref, out) <= RTOL
    return proto


@pytest.mark.parametrize("name", MODELS)
def test_builtin_models_export_and_agree_with_onnx_runtime(tmp_path, name, rng):
    model = build_model(name, SHAPES[name], 10, seed=0)
    proto = check_export(tmp_path, model, rng.standard_normal((2,) + SHAPES[name]).astype(np.float32),
                         rng.standard_normal((7,) + SHAPES[name]).astype(np.float32))
    inits = {i.name for i in proto.graph.initializer}
    assert set(model.state_dict()) - {k for k in model.state_dict() if k.endswith("num_batches_tracked")} <= inits
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = {n.op_type for n in proto.graph.node}
    assert "Dropout" not in ops


def test_digits_predictions_are_identical(tmp_path):
    from gpunet.data import load_dataset
    data = load_dataset("digits")
    x = data.x_test.astype(np.float32)
    for name in MODELS:
        shape = (1, 8, 8)
        model = build_model(name, shape, 10, seed=1)
        path = export(model, x[:4], tmp_path / f"{name}.onnx")
        out = run_onnx(path, x)[0]
        ref = reference(model, x)[0]
        assert rel_diff(ref, out) <= RTOL, name
        assert np.array_equal(out.argmax(axis=1), ref.argmax(axis=1)), name


# --- the user-written models of the autograd issue, as Modules ------------------------------------------------

class SharedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.lin(self.lin(x).tanh()).relu())


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(5, 4), nn.Linear(4, 1)

    def forward(self, x1, x2):
        u, v = self.a(x1).sigmoid(), self.b(x2)
        return self.head(u + v) * self.head(u * v) / 2


class Attention(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.d, self.q, self.k, self.v = d, nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def project(self, layer, t):
        n, steps, d = t.shape
        return layer(t.reshape(n * steps, d)).reshape(n, steps, d)

    def forward(self, x):
        scores = self.project(self.q, x) @ self.project(self.k, x).transpose(0, 2, 1) / np.sqrt(self.d)
        e = (scores - scores.max(axis=-1, keepdims=True)).exp()
        return (e / e.sum(axis=-1, keepdims=True)) @ self.project(self.v, x)


class UserRNN(nn.Module):
    def __init__(self, f=2, h=4):
        super().__init__()
        self.h, self.cell_x, self.cell_h, self.head = h, nn.Linear(f, h), nn.Linear(h, h), nn.Linear(h, 3)

    def forward(self, x):
        state = gpunet.tensor(np.zeros((x.shape[0], self.h), np.float32))
        for t in range(x.shape[1]):
            state = (self.cell_x(x[:, t]) + self.cell_h(state)).tanh()
        return self.head(state)


def test_a_layer_shared_twice(tmp_path, rng):
    proto = check_export(tmp_path, SharedTwice(), rng.standard_normal((5, 4)).astype(np.float32),
                         rng.standard_normal((3, 4)).astype(np.float32))
    assert sum(n.op_type == "Gemm" and "lin.weight" in n.input for n in proto.graph.node) == 2


def test_two_inputs(tmp_path, rng):
    check_export(tmp_path, TwoInputs(), tuple(rng.standard_normal((6, k)).astype(np.float32) for k in (3, 5)),
                 tuple(rng.standard_normal((2, k)).astype(np.float32) for k in (3, 5)))


def test_attention_from_tensor_operations(tmp_path, rng):
    proto = check_export(tmp_path, Attention(), rng.standard_normal((2, 5, 4)).astype(np.float32),
                         rng.standard_normal((3, 5, 4)).astype(np.float32))
    assert {"ReduceMax", "ReduceSum", "Exp", "MatMul"} <= {n.op_type for n in proto.graph.node}


def test_a_user_rnn_loop(tmp_path, rng):
    proto = check_export(tmp_path, UserRNN(), rng.standard_normal((3, 6, 2)).astype(np.float32),
                         rng.standard_normal((5, 6, 2)).astype(np.float32))
    assert "Expand" in {n.op_type for n in proto.graph.node}  # the zero state follows the batch


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_recurrent_layers_map_to_onnx_own_ops(tmp_path, rng, kind):
    cls = {"RNN": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}[kind]
    model = nn.Sequential(nn.Embedding(11, 5), cls(5, 6, num_layers=2), nn.LastStep(), nn.Linear(6, 3))
    proto = check_export(tmp_path, model, rng.integers(0, 11, (2, 7)), rng.integers(0, 11, (4, 7)))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count(kind) == 2 and "Gather" in ops
    assert {"1.weight_ih_l0", "1.weight_hh_l1", "1.bias_ih_l1", "0.weight"} <= {i.name for i in proto.graph.initializer}


def test_relu_rnn_with_given_state_and_rows_as_sequence(tmp_path, rng):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rows, self.rnn, self.head = nn.RowsAsSequence(), nn.RNN(8, 5, nonlinearity="relu"), nn.Linear(5, 2)

        def forward(self, x, h0):
            return self.head(self.rnn(self.rows(x), h0.transpose(1, 0, 2))[:, -1])
    check_export(tmp_path, Net(), (rng.standard_normal((2, 1, 8, 8)).astype(np.float32),
                                   rng.standard_normal((2, 1, 5)).astype(np.float32)))


def test_other_layers_and_tensor_operations(tmp_path, rng):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(2, 4, 3, padding=1), nn.PReLU(4), nn.AvgPool2d(2, padding=1),
                nn.Concat(nn.Conv2d(4, 3, 1), nn.Sequential(nn.Conv2d(4, 2, 3, padding=1), nn.ELU(0.5))),
                nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(5 * 3 * 3, 6, bias=False), nn.BatchNorm1d(6))

        def forward(self, x):
            y = self.body(x)
            z = gpunet.stack([y, (y ** 2 + 1).sqrt().log(), -y], axis=1)   # (N, 3, 6)
            return gpunet.concatenate([z.mean(axis=1), z[:, 1:, ::2].sum(axis=(1, 2), keepdims=True).reshape(-1, 1),
                                       z[:, None, 0, 2].reshape(-1, 1) - 0.5], axis=1)
    model = Net()
    bn = model.body[7]
    bn.running_mean = rng.standard_normal(6).astype(np.float32)
    bn.running_var = rng.uniform(0.5, 2, 6).astype(np.float32)
    check_export(tmp_path, model, rng.standard_normal((3, 2, 5, 5)).astype(np.float32),
                 rng.standard_normal((4, 2, 5, 5)).astype(np.float32))


def test_export_from_a_device_copies_weights_to_the_host(tmp_path, rng, device_backend):
    host = build_model("cnn", (1, 8, 8), 10, seed=0)
    model = build_model("cnn", (1, 8, 8), 10, seed=0, backend=device_backend)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    path = export(model, x, tmp_path / "device.onnx")
    assert rel_diff(reference(host, x)[0], run_onnx(path, x)[0]) <= RTOL


class Custom(Node):
    def forward(self, x):
        return x * 2

    def backward(self, gy):
        return gy * 2


def test_an_operation_without_mapping_names_itself_and_its_module(tmp_path):
    class Twice(nn.Module):
        def forward(self, x):
            return Custom()(x)
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), Twice()))
    with pytest.raises(ExportError, match=r"no ONNX mapping for the operation Custom recorded in module '1\.1'"):
        export(model, np.ones((2, 3), np.float32), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_value_computed_outside_the_graph_is_reported(tmp_path):
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            mask = gpunet.tensor((x.data > 0).astype(np.float32))  # array maths on .data: not in the graph
            return self.lin(x) * mask
    with pytest.raises(ExportError, match="changes with the input values or the batch size at the model's own"):
        export(Leaky(), np.array([[1, -1, 2], [-2, 1, -1]], np.float32), tmp_path / "m.onnx")


def test_cli_export_rebuilds_the_checkpoint_model(tmp_path, capsys):
    from gpunet.checkpoint import load_checkpoint, load_model_state
    from gpunet.data import load_dataset
    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--epochs", "1", "--limit-train", "200", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    assert main(["export", str(out / "checkpoint.npz"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "m.onnx" in capsys.readouterr().out
    ck = load_checkpoint(out / "checkpoint.npz")
    model = build_model("mlp", (1, 8, 8), 10)
    load_model_state(model, ck)
    data = load_dataset("digits", stats=(np.asarray(ck.extra["mean"]), np.asarray(ck.extra["std"])), test_only=True)
    x = data.x_test.astype(np.float32)
    out_onnx = run_onnx(tmp_path / "m.onnx", x)[0]
    assert np.array_equal(out_onnx.argmax(1), reference(model, x)[0].argmax(1))
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert "mean" in meta and "std" in meta


def test_opset_below_17_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"opset must lie in \[17"):
        export(nn.Linear(2, 2), np.ones((1, 2), np.float32), tmp_path / "m.onnx", opset=13)
