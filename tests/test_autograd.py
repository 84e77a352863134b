"""The tape itself: every tensor op's gradient by gradcheck in float64 on every backend, broadcasting,
accumulation, retain_graph, no_grad, freeing, and the errors."""
import gc
import weakref

import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.autograd import Node, Tensor, backward, no_grad
from gpunet.gradcheck import gradcheck


def _dev(backend, *arrays):
    return tuple(backend.asarray(a) for a in arrays)


def _positive(rng, shape):
    return rng.uniform(0.5, 2.0, size=shape)


# (name, function of tensors, input shapes, input maker) -- every op and operator of the Tensor API
OPS = [
    ("add broadcast", lambda a, b: a + b, [(2, 3, 4), (3, 1)], None),
    ("sub broadcast", lambda a, b: a - b, [(3, 1), (2, 3, 4)], None),
    ("mul broadcast", lambda a, b: a * b, [(2, 3, 4), (4,)], None),
    ("div broadcast", lambda a, b: a / b, [(2, 3), (1, 3)], "positive"),
    ("scalars", lambda a: 2.0 - a * 3 + 1 / (a + 5) - (a / 2) + 4 * a, [(3, 2)], "positive"),
    ("neg", lambda a: -a, [(4,)], None),
    ("pow", lambda a: a ** 3 + a ** 0.5, [(2, 3)], "positive"),
    ("matmul", lambda a, b: a @ b, [(3, 4), (4, 2)], None),
    ("matmul batched broadcast", lambda a, b: a @ b, [(2, 3, 4), (4, 5)], None),
    ("sum all", lambda a: a.sum(), [(2, 3)], None),
    ("sum axis keepdims", lambda a: a.sum(axis=1, keepdims=True) * a, [(2, 3, 2)], None),
    ("sum axes", lambda a: a.sum(axis=(0, 2)), [(2, 3, 2)], None),
    ("mean", lambda a: a.mean(axis=0) + a.mean(), [(4, 3)], None),
    ("max axis", lambda a: a.max(axis=1), [(3, 5)], "distinct"),
    ("max keepdims", lambda a: a - a.max(axis=-1, keepdims=True), [(2, 3, 4)], "distinct"),
    ("max all", lambda a: a.max() * a, [(3, 3)], "distinct"),
    ("reshape", lambda a: a.reshape(3, 4).reshape((2, 6)), [(2, 3, 2)], None),
    ("transpose", lambda a: a.transpose(2, 0, 1) * a.transpose((2, 0, 1)), [(2, 3, 4)], None),
    ("T", lambda a: a.T @ a, [(3, 2)], None),
    ("basic indexing", lambda a: a[1, 1:3] * a[0, :2] + a[..., -1].sum(), [(2, 4)], None),
    ("index arrays with repeats", lambda a: a[np.array([0, 2, 0]), 1:], [(3, 3)], None),
    ("exp log sqrt", lambda a: a.exp() + a.log() * a.sqrt(), [(2, 3)], "positive"),
    ("tanh sigmoid relu", lambda a: a.tanh() * a.sigmoid() + a.relu(), [(3, 4)], "away from 0"),
    ("concatenate", lambda a, b: gpunet.concatenate([a, b, a], axis=1), [(2, 3), (2, 1)], None),
    ("cat", lambda a, b: gpunet.cat((a, b)), [(1, 3), (2, 3)], None),
    ("stack", lambda a, b: gpunet.stack([a, b], axis=1) * 2, [(2, 3), (2, 3)], None),
]


@pytest.mark.parametrize("name,fn,shapes,kind", OPS, ids=[o[0] for o in OPS])
def test_every_tensor_op_by_gradcheck(backend, rng, name, fn, shapes, kind):
    arrays = []
    for shape in shapes:
        if kind == "positive":
            a = _positive(rng, shape)
        elif kind == "distinct":  # a shuffled linspace: no ties, finite differences stay valid at the max
            a = rng.permutation(np.linspace(-2, 2, int(np.prod(shape)))).reshape(shape)
        elif kind == "away from 0":
            a = rng.uniform(0.2, 1.5, size=shape) * rng.choice([-1, 1], size=shape)
        else:
            a = rng.standard_normal(shape)
        arrays.append(a)
    if name == "index arrays with repeats" and backend.is_gpu:
        fn = lambda a: a[backend.asarray(np.array([0, 2, 0])), 1:]  # noqa: E731 (device index array)
    report = gradcheck(fn, _dev(backend, *arrays))
    assert report.ok and len(report.checks) == len(shapes)


def test_broadcast_gradients_are_reduced_to_the_input_shapes(rng):
    a = gpunet.tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    b = gpunet.tensor(rng.standard_normal((3, 1)), requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.shape == (2, 3, 4) and b.grad.shape == (3, 1)
    np.testing.assert_allclose(b.grad, a.data.sum(axis=(0, 2))[:, None])


def test_float32_stays_float32_and_grads_live_where_the_data_does(backend, rng):
    x = gpunet.tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True, backend=backend)
    y = ((x * 2 + 1).tanh() @ x.T).mean()
    assert y.dtype == np.float32 and y.backend is backend
    y.backward()
    assert x.grad.dtype == np.float32 and type(x.grad) is type(x.data)


def test_gradients_accumulate_over_backward_calls_and_uses():
    x = gpunet.tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).sum().backward()
    (3 * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2 + 3, 4 + 3])
    x.zero_grad()
    y = x * 2
    (y + y * y).sum().backward()  # y used twice: both paths add
    np.testing.assert_array_equal(x.grad, 2 * (1 + 2 * x.data * 2))


def test_leaf_gradients_never_alias_each_other_or_the_seed():
    a, b = (gpunet.tensor(np.ones(3), requires_grad=True) for _ in range(2))
    seed = np.full(3, 2.0)
    (a + b).backward(seed)
    assert a.grad is not b.grad and a.grad is not seed
    a.grad *= 10  # in-place updates (clipping) touch only a
    np.testing.assert_array_equal(b.grad, seed)
    np.testing.assert_array_equal(seed, [2, 2, 2])
    c = gpunet.tensor(np.ones((2, 3)), requires_grad=True)
    c.sum().backward()  # a broadcast view comes back: the stored grad is a writable contiguous array
    c.grad += 1
    np.testing.assert_array_equal(c.grad, np.full((2, 3), 2.0))


def test_retain_graph_and_the_clear_error_on_a_freed_graph():
    x = gpunet.tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.copy()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match=r"backward through the graph a second time: .*retain_graph=True"):
        y.backward()


def test_backward_frees_what_forward_saved(rng):
    x = gpunet.tensor(rng.standard_normal(5), requires_grad=True)
    e = x.exp()
    node = e.creator
    saved = weakref.ref(node.y)
    s = e.sum()
    del e  # the output array is the saved one; only the node holds it now
    gc.collect()
    assert saved() is not None
    s.backward()
    gc.collect()
    assert saved() is None and "_freed" in node.__dict__ and "y" not in node.__dict__


def test_intermediate_arrays_die_with_their_tensors(rng):
    """Nodes keep what forward saved, not their inputs' arrays (an Add saves shapes only)."""
    x = gpunet.tensor(rng.standard_normal((4, 4)), requires_grad=True)
    t = x + 1
    data = weakref.ref(t.data)
    s = (t + 2).sum()
    del t
    gc.collect()
    assert data() is None
    s.backward()
    np.testing.assert_array_equal(x.grad, np.ones((4, 4)))


def test_no_grad_records_nothing():
    x = gpunet.tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = x * 2
        z = nn.Linear(3, 2, dtype=np.float64)(x.reshape(1, 3))
    assert y.creator is None and not y.requires_grad and z.creator is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_detach_comparisons_and_host_copies():
    x = gpunet.tensor(np.array([1.0, 5.0]), requires_grad=True)
    d = (x * 2).detach()
    assert d.creator is None and not d.requires_grad
    m = x > 2
    assert m.dtype == bool and not m.requires_grad and m.numpy().tolist() == [False, True]
    h = x.numpy()
    h[0] = 9
    assert float(x.data[0]) == 1.0  # a copy
    assert (x == x).numpy().all() and x.shape == (2,) and x.dtype == np.float64 and len(x) == 2


def test_errors_name_the_problem():
    x = gpunet.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"grad can be omitted only for one-element tensors.*\(2, 3\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"backward: gradient of shape \(3,\) for a tensor of shape \(2, 3\)"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(TypeError, match="exponent must be a number"):
        x ** x
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ: \(2, 3\) @ \(2, 3\)"):
        x @ x
    with pytest.raises(TypeError, match="only floating tensors can require grad"):
        gpunet.tensor(np.arange(3), requires_grad=True)

    class Wrong(Node):
        def forward(self, a):
            return a.sum()

        def backward(self, gy):
            return gy  # a 0-d gradient for a (2, 3) input

    with pytest.raises(ValueError, match=r"Wrong.backward: gradient of shape \(\) for a tensor of shape \(2, 3\)"):
        Wrong()(x).backward()


def test_multi_output_backward_from_several_roots(rng):
    lstm = nn.LSTM(2, 3, dtype=np.float64)
    x = gpunet.tensor(rng.standard_normal((2, 4, 2)))
    y = lstm(x)
    backward([y, lstm.h_n, lstm.c_n], [np.ones(y.shape), None, np.ones(lstm.c_n.shape)])
    assert all(p.grad is not None for p in lstm.parameters())


def test_a_module_called_twice_gets_the_sum_of_both_gradients(rng):
    lin = nn.Linear(3, 3, dtype=np.float64)
    x = gpunet.tensor(rng.standard_normal((2, 3)))
    lin(lin(x)).sum().backward()
    w, b, xv = lin.weight.data, lin.bias.data, x.data
    h = xv @ w.T + b
    g2 = np.ones((2, 3))          # d/d(second output)
    g1 = g2 @ w                   # d/dh
    np.testing.assert_allclose(lin.weight.grad, g2.T @ h + g1.T @ xv)
    np.testing.assert_allclose(lin.bias.grad, g2.sum(0) + g1.sum(0))


def test_parameters_are_tensors_and_modules_return_tensors(rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert all(isinstance(p, Tensor) and p.requires_grad for p in model.parameters())
    y = model(gpunet.tensor(rng.standard_normal((2, 1, 4, 4)).astype(np.float32)))
    assert isinstance(y, Tensor) and y.requires_grad and y.shape == (2, 3)
    loss = nn.SoftmaxCrossEntropy()(y, np.array([0, 2]))
    assert isinstance(loss, Tensor) and loss.shape == ()
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


class TwoTower(nn.Module):
    """A user-written forward: one encoder used twice, a gate from tensor ops, two inputs."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 5, dtype=np.float64)
        self.gate = nn.Linear(5, 5, dtype=np.float64)
        self.head = nn.Linear(5, 2, dtype=np.float64)

    def forward(self, a, b):
        u, v = self.encoder(a).tanh(), self.encoder(b).tanh()
        g = self.gate(u * v).sigmoid()
        return self.head(g * u + (1 - g) * v)


def test_a_user_written_module_trains_and_checks(rng):
    from gpunet import optim
    net = TwoTower()
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    assert gradcheck(net, (a, b)).ok  # modules differentiate their first input and every parameter
    labels = rng.integers(0, 2, 6)
    opt = optim.Adam(net.parameters(), lr=0.05)
    crit = nn.SoftmaxCrossEntropy()
    ta, tb = gpunet.tensor(a), gpunet.tensor(b)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = crit(net(ta, tb), labels)
        loss.backward()
        opt.step()
        first = float(loss) if first is None else first
    assert float(loss) < 0.5 * first
    with no_grad():
        assert net(ta, tb).creator is None
    assert bool(gpunet.tensor(np.array(1.0))) and not bool(gpunet.tensor(np.array(0.0)))


def test_mixing_devices_in_a_tensor_op_is_a_device_error(device_backend, rng):
    if not device_backend.is_gpu:
        pytest.skip("needs device arrays (cupy or the stand-in)")
    host = gpunet.tensor(rng.standard_normal((2, 3)))
    dev = gpunet.tensor(rng.standard_normal((2, 3)), backend=device_backend)
    with pytest.raises(gpunet.DeviceError, match=r"operands live on different devices: \(2, 3\) on NumPy"):
        host + dev


def test_outputs_report_the_models_backend(rng):
    emu = gpunet.get_backend("emulator")
    layer = nn.Linear(3, 2).to(emu)
    y = layer(gpunet.tensor(rng.standard_normal((1, 3)).astype(np.float32)))  # a NumPy-made input
    assert y.backend is emu and (y * 2).backend is emu
