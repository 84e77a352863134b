"""RNN/GRU/LSTM against PyTorch with the same weights (outputs, final states, input/state/weight gradients),
float64 gradient checks on edge shapes, every backend against NumPy, sequence adapters, errors, and the
row-by-row digits example."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.backend import get_backend
from gpunet.gradcheck import gradcheck

try:
    import torch
except ImportError:  # optional third opinion
    torch = None

CELLS = {"RNN": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}
SHAPES = [(3, 5, 4, 6), (1, 1, 3, 2), (2, 1, 1, 1), (1, 4, 2, 3)]  # (N, T, F, H): batch 1, T = 1, F = H = 1


def make(kind, f, h, layers=1, **kw):
    return CELLS[kind](f, h, layers, **kw)


def assert_matches_torch(got, ref, ours, grads, tol):
    """Outputs and states (None where torch has none) and every parameter gradient, in torch's order."""
    for k, v in ref.items():
        if v is None:
            assert got[k] is None, k
        else:
            np.testing.assert_allclose(got[k], v, rtol=tol, atol=tol, err_msg=k)
    assert [name for name, _ in ours.named_parameters()] == list(grads)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name], rtol=tol, atol=tol, err_msg=name)


def run_torch(kind, ours, x, h0, c0, dy, dh_n, dc_n, dtype):
    """PyTorch's result for the same weights: (y, h_n, c_n, dx, dh0, dc0, {param: grad})."""
    tnet = getattr(torch.nn, kind)(ours.input_size, ours.hidden_size, ours.num_layers, batch_first=True,
                                   bias=ours.bias, bidirectional=ours.bidirectional).to(dtype)
    if kind == "RNN" and ours.nonlinearity == "relu":
        tnet = torch.nn.RNN(ours.input_size, ours.hidden_size, ours.num_layers, nonlinearity="relu",
                            batch_first=True, bias=ours.bias, bidirectional=ours.bidirectional).to(dtype)
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=True)
    t = {k: torch.from_numpy(v).requires_grad_(True) for k, v in (("x", x), ("h0", h0), ("c0", c0))}
    if kind == "LSTM":
        ty, (thn, tcn) = tnet(t["x"], (t["h0"], t["c0"]))
    else:
        (ty, thn), tcn = tnet(t["x"], t["h0"]), None
    loss = (ty * torch.from_numpy(dy)).sum() + (thn * torch.from_numpy(dh_n)).sum()
    if tcn is not None:
        loss = loss + (tcn * torch.from_numpy(dc_n)).sum()
    loss.backward()
    out = dict(y=ty, h_n=thn, c_n=tcn, dx=t["x"].grad, dh0=t["h0"].grad, dc0=t["c0"].grad if tcn is not None else None)
    out = {k: (None if v is None else v.detach().numpy()) for k, v in out.items()}
    return out, {n: p.grad.numpy() for n, p in tnet.named_parameters()}


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_matches_torch(rng, kind, layers, shape, dtype, tol):
    n, t, f, h = shape
    ours = make(kind, f, h, layers, dtype=dtype)
    x, h0, c0 = (rng.standard_normal(s).astype(dtype) for s in ((n, t, f), (layers, n, h), (layers, n, h)))
    y = ours(x, h0, c0) if kind == "LSTM" else ours(x, h0)
    dy, dh_n, dc_n = (rng.standard_normal(s).astype(dtype) for s in (y.shape, (layers, n, h), (layers, n, h)))
    dx = ours.backward(dy, dh_n, dc_n if kind == "LSTM" else None)
    ref, grads = run_torch(kind, ours, x, h0, c0, dy, dh_n, dc_n, getattr(torch, np.dtype(dtype).name))
    got = dict(y=y, h_n=ours.h_n, c_n=ours.c_n, dx=dx, dh0=ours.dh0, dc0=ours.dc0)
    assert y.dtype == dx.dtype == dtype and y.shape == (n, t, h) and dx.shape == x.shape
    assert_matches_torch(got, ref, ours, grads, tol)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("kind,kw", [("RNN", dict(nonlinearity="relu")), ("GRU", dict(bias=False)),
                                     ("LSTM", dict(bias=False))])
def test_variants_match_torch_with_zero_initial_state(rng, kind, kw):
    ours = make(kind, 3, 4, 2, dtype=np.float64, **kw)
    x = rng.standard_normal((2, 3, 3))
    y = ours(x)  # h0 = c0 = 0 by default
    dy = rng.standard_normal(y.shape)
    zeros = np.zeros((2, 2, 4))
    dx = ours.backward(dy)
    ref, grads = run_torch(kind, ours, x, zeros, zeros, dy, zeros, zeros, torch.float64)
    np.testing.assert_allclose(y, ref["y"], atol=1e-12)
    np.testing.assert_allclose(dx, ref["dx"], atol=1e-12)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name], atol=1e-12, err_msg=name)


def test_pytorch_names_shapes_and_default_init():
    lstm = nn.LSTM(5, 3, num_layers=2)
    assert [(k, v.shape) for k, v in lstm.state_dict().items()] == [
        ("weight_ih_l0", (12, 5)), ("weight_hh_l0", (12, 3)), ("bias_ih_l0", (12,)), ("bias_hh_l0", (12,)),
        ("weight_ih_l1", (12, 3)), ("weight_hh_l1", (12, 3)), ("bias_ih_l1", (12,)), ("bias_hh_l1", (12,))]
    assert nn.GRU(2, 4).weight_hh_l0.shape == (12, 4) and nn.RNN(2, 4).weight_ih_l0.shape == (4, 2)
    big = nn.GRU(30, 100)
    w = np.concatenate([v.ravel() for v in big.state_dict().values()])
    assert w.dtype == np.float32 and np.abs(w).max() <= 0.1 and np.abs(w).max() > 0.099  # U(-1/sqrt(H), 1/sqrt(H))
    assert abs(w.mean()) < 2e-3 and abs(w.std() - 0.1 / np.sqrt(3)) < 1e-3
    be = get_backend("numpy")
    be.seed(7)
    a = nn.LSTM(3, 4).state_dict()
    be.seed(7)
    b = nn.LSTM(3, 4).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)  # drawn from the backend's seeded generator


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("layers,n,t", [(2, 2, 3), (1, 1, 1), (2, 1, 1)])
def test_gradcheck(rng, kind, layers, n, t):
    m = make(kind, 3, 2, layers)
    x = rng.standard_normal((n, t, 3))
    report = gradcheck(m, x)
    assert report.ok and len(report.checks) == 1 + 4 * layers


@pytest.mark.parametrize("kind", list(CELLS))
def test_gradcheck_initial_and_final_states(rng, kind):
    """Gradients w.r.t. h0 (and c0), and from dh_n (and dc_n), through a (forward, backward) pair."""
    m = make(kind, 2, 3, 2, dtype=np.float64)
    x = rng.standard_normal((2, 3, 2))
    h0, c0 = rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 2, 3))
    lstm = kind == "LSTM"

    def fwd(x, h0, c0):  # output sequence and final states, flattened into one array
        y = m(x, h0, c0) if lstm else m(x, h0)
        parts = [y.ravel(), m.h_n.ravel()] + ([m.c_n.ravel()] if lstm else [])
        return np.concatenate(parts)

    def bwd(r):
        ny = x.shape[0] * x.shape[1] * 3
        dy, dh_n = r[:ny].reshape(2, 3, 3), r[ny:ny + 12].reshape(2, 2, 3)
        dc_n = r[ny + 12:].reshape(2, 2, 3) if lstm else None
        dx = m.backward(dy, dh_n, dc_n)
        return dx, m.dh0, (m.dc0 if lstm else np.zeros_like(c0))

    assert gradcheck((fwd, bwd), (x, h0, c0)).ok


def test_every_backend_matches_numpy(backend, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    for kind in CELLS:
        ref = make(kind, 5, 6, 2)
        m = make(kind, 5, 6, 2, backend=backend)
        m.load_state_dict(ref.state_dict())
        y_ref, y = ref(x), m(backend.asarray(x))
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        dx_ref, dx = ref.backward(dy), m.backward(backend.asarray(dy))
        np.testing.assert_allclose(backend.asnumpy(y), y_ref, rtol=1e-5, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(backend.asnumpy(dx), dx_ref, rtol=1e-5, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(backend.asnumpy(m.h_n), ref.h_n, rtol=1e-5, atol=1e-6, err_msg=kind)
        for (name, p), q in zip(m.named_parameters(), ref.parameters()):
            np.testing.assert_allclose(backend.asnumpy(p.grad), q.grad, rtol=1e-4, atol=1e-5, err_msg=name)


def test_many_to_one_last_step_equals_zero_gradients_elsewhere(rng):
    lstm = nn.LSTM(3, 4)
    model = nn.Sequential(lstm, nn.LastStep())
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    y = model(x)
    np.testing.assert_array_equal(y, lstm.h_n[-1])
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = model.backward(dy)
    grads = {n: p.grad.copy() for n, p in lstm.named_parameters()}
    lstm.zero_grad()
    full = np.zeros((2, 5, 4), np.float32)
    full[:, -1] = dy
    lstm(x)
    np.testing.assert_array_equal(lstm.backward(full), dx)
    for n, p in lstm.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[n])
    assert gradcheck(nn.Sequential(nn.GRU(3, 2), nn.LastStep()), rng.standard_normal((2, 3, 3))).ok


def test_rows_as_sequence(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    m = nn.RowsAsSequence()
    y = m(x)
    assert y.shape == (2, 4, 15)
    np.testing.assert_array_equal(y[1, 2], x[1, :, 2, :].ravel())
    assert gradcheck(m, x).ok


def test_truncated_bptt_chunks_continue_the_sequence(rng):
    lstm = nn.LSTM(2, 3, num_layers=2, dtype=np.float64)
    x = rng.standard_normal((2, 6, 2))
    full = lstm(x)
    h_full, c_full = lstm.h_n, lstm.c_n
    first = lstm(x[:, :4])
    second = lstm(x[:, 4:], lstm.h_n, lstm.c_n)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, atol=1e-12)
    np.testing.assert_allclose(lstm.h_n, h_full, atol=1e-12)
    np.testing.assert_allclose(lstm.c_n, c_full, atol=1e-12)


def test_clipping_and_frozen_weights(rng):
    gru = nn.GRU(3, 8, num_layers=2)
    gru.weight_ih_l0.requires_grad = False
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    y = gru(x)
    gru.backward(100 * np.ones_like(y))
    assert gru.weight_ih_l0.grad is None and gru.weight_hh_l0.grad is not None
    before = optim.clip_grad_norm_(gru.parameters(), 1.0)
    after = np.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in gru.parameters()
                        if p.grad is not None))
    assert before > 1.0 and after == pytest.approx(1.0, rel=1e-4)
    w = gru.weight_ih_l0.data.copy()
    opt = optim.SGD(gru.parameters(), lr=0.1)
    opt.step()
    np.testing.assert_array_equal(gru.weight_ih_l0.data, w)


def test_errors():
    lstm = nn.LSTM(3, 4, num_layers=2)
    x = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"LSTM: expected input of shape \(N, T, 3\).*got \(2, 5, 4\)"):
        lstm(np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected input of shape"):
        lstm(np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"LSTM: expected h0 of shape \(2, 2, 4\)"):
        lstm(x, np.zeros((1, 2, 4), np.float32))
    with pytest.raises(TypeError, match="c0 is only used by LSTM"):
        nn.GRU(3, 4)(x, None, np.zeros((1, 2, 4), np.float32))
    with pytest.raises(TypeError, match="input dtype float64 does not match"):
        lstm(x.astype(np.float64))
    with pytest.raises(RuntimeError, match=r"LSTM.backward\(\) called without a preceding forward"):
        lstm.backward(np.zeros((2, 5, 4), np.float32))
    lstm(x)
    with pytest.raises(ValueError, match=r"LSTM.backward: expected dy of shape \(2, 5, 4\)"):
        lstm.backward(np.zeros((2, 4), np.float32))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
            nn.RNN(3, bad)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    lstm.eval()
    lstm(x)
    with pytest.raises(RuntimeError, match="eval-mode forwards keep no cache"):
        lstm.backward(np.zeros((2, 5, 4), np.float32))
    assert repr(nn.LSTM(3, 4, 2)) == "LSTM(3, 4, num_layers=2)"


def _example():
    path = Path(__file__).resolve().parents[1] / "examples" / "mnist_rows.py"
    spec = importlib.util.spec_from_file_location("mnist_rows", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mnist_rows_example_learns_digits_row_by_row(capsys):
    pytest.importorskip("sklearn")
    acc = _example().main(["--cell", "gru", "--hidden", "32", "--epochs", "8", "--device", "cpu"])
    assert acc >= 0.90
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (1, 1, 2, 1)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_bidirectional_matches_torch(rng, kind, layers, shape, dtype, tol):
    """torch.nn.RNN/GRU/LSTM(bidirectional=True, num_layers=layers) with our weights: outputs [forward |
    reverse], h_n/c_n (num_layers * 2, N, H), dx, dh0, dc0 and every weight gradient, autograd API."""
    import gpunet
    n, t, f, h = shape
    ours = make(kind, f, h, layers, dtype=dtype, bidirectional=True)
    s = (2 * layers, n, h)
    x, h0, c0 = (rng.standard_normal(v).astype(dtype) for v in ((n, t, f), s, s))
    tx, th0, tc0 = (gpunet.tensor(v, requires_grad=True) for v in (x, h0, c0))
    y = ours(tx, th0, tc0) if kind == "LSTM" else ours(tx, th0)
    dy, dh_n, dc_n = (rng.standard_normal(v).astype(dtype) for v in ((n, t, 2 * h), s, s))
    loss = (y * gpunet.tensor(dy)).sum() + (ours.h_n * gpunet.tensor(dh_n)).sum()
    if kind == "LSTM":
        loss = loss + (ours.c_n * gpunet.tensor(dc_n)).sum()
    loss.backward()
    ref, grads = run_torch(kind, ours, x, h0, c0, dy, dh_n, dc_n, getattr(torch, np.dtype(dtype).name))
    got = dict(y=y.data, h_n=ours.h_n.data, c_n=None if ours.c_n is None else ours.c_n.data, dx=tx.grad,
               dh0=th0.grad, dc0=tc0.grad if kind == "LSTM" else None)
    assert y.shape == (n, t, 2 * h) and ours.h_n.shape == s
    assert_matches_torch(got, ref, ours, grads, tol)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_bidirectional_state_dicts_move_both_ways(rng):
    """The issue's check: torch.nn.LSTM(bidirectional=True, num_layers=2) weights into ours and back."""
    tnet = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    ours = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in tnet.state_dict().items()]
    assert list(ours.state_dict())[4:8] == ["weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse",
                                            "bias_hh_l0_reverse"]
    assert ours.weight_ih_l1.shape == (20, 10)  # layer 1 reads [forward | reverse]
    ours.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    with torch.no_grad():
        ty, (th, tc) = tnet(torch.from_numpy(x))
    np.testing.assert_allclose(ours(x), ty.numpy(), atol=2e-6)
    np.testing.assert_allclose(ours.h_n, th.numpy(), atol=2e-6)
    np.testing.assert_allclose(ours.c_n, tc.numpy(), atol=2e-6)
    twin = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=True)
    assert repr(ours) == "LSTM(3, 5, num_layers=2, bidirectional=True)"


@pytest.mark.parametrize("kind", list(CELLS))
def test_bidirectional_gradcheck(rng, kind):
    m = make(kind, 3, 2, 2, bidirectional=True)
    report = gradcheck(m, rng.standard_normal((2, 3, 3)))
    assert report.ok and len(report.checks) == 1 + 4 * 2 * 2


def test_bidirectional_every_backend_matches_numpy(backend, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    for kind in CELLS:
        ref = make(kind, 5, 6, 2, bidirectional=True)
        m = make(kind, 5, 6, 2, backend=backend, bidirectional=True)
        m.load_state_dict(ref.state_dict())
        y_ref, y = ref(x), m(backend.asarray(x))
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        dx_ref, dx = ref.backward(dy), m.backward(backend.asarray(dy))
        np.testing.assert_allclose(backend.asnumpy(y), y_ref, rtol=1e-5, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(backend.asnumpy(dx), dx_ref, rtol=1e-5, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(backend.asnumpy(m.h_n), ref.h_n, rtol=1e-5, atol=1e-6, err_msg=kind)
        for (name, p), q in zip(m.named_parameters(), ref.parameters()):
            np.testing.assert_allclose(backend.asnumpy(p.grad), q.grad, rtol=1e-4, atol=1e-5, err_msg=name)


def test_bidirectional_in_sequential_trains_with_the_trainer():
    """A bidirectional GRU reads a sequence both ways: is the first element larger than the last?
    LastStep(bidirectional=True) hands the head each direction's final state, [y[:, -1, :H] | y[:, 0, H:]],
    equal to h_n's last two rows; each has just read one of the two elements."""
    from gpunet.data import DataLoader
    from gpunet.training import Trainer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 12, 1)).astype(np.float32)
    y = (x[:, 0, 0] > x[:, -1, 0]).astype(np.int64)
    get_backend("numpy").seed(0)
    gru = nn.GRU(1, 8, bidirectional=True)
    model = nn.Sequential(gru, nn.LastStep(bidirectional=True), nn.Linear(16, 2))
    np.testing.assert_array_equal(model[1](gru(x[:3])), np.concatenate([gru.h_n[0], gru.h_n[1]], axis=1))
    assert gradcheck(nn.Sequential(nn.RNN(2, 3, bidirectional=True), nn.LastStep(bidirectional=True)),
                     rng.standard_normal((2, 3, 2))).ok
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=1e-2), nn.SoftmaxCrossEntropy(), progress="none")
    trainer.fit(DataLoader(x, y, 32, seed=0), epochs=15)
    with_pred = model.eval()(x).argmax(axis=1)
    assert (with_pred == y).mean() >= 0.9


def test_bidirectional_errors():
    gru = nn.GRU(3, 4, num_layers=2, bidirectional=True)
    x = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"GRU: expected h0 of shape \(4, 2, 4\) \(num_layers \* 2, N, hidden_size\)"):
        gru(x, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        nn.LSTM(3, 4, bidirectional=1)
    gru(x)
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 5, 8\) \(N, T, 2 \* hidden_size\)"):
        gru.backward(np.zeros((2, 5, 4), np.float32))
