"""GRU's two placements of the reset gate, each against its own equations (written out in PyTorch tensors,
differentiated by torch.autograd), by float64 gradcheck, and on every backend against NumPy."""
import numpy as np
import pytest

from gpunet import nn
from gpunet.gradcheck import gradcheck

torch = pytest.importorskip("torch")


def equations(state, x, h0, reset_after):
    """The GRU of the docstring, step by step: batch-first x (N, T, F), h0 (L, N, H) -> y, h_n."""
    hid = h0.shape[-1]
    seq, h_n = x, []
    for layer in range(h0.shape[0]):
        w_ih, w_hh = state[f"weight_ih_l{layer}"], state[f"weight_hh_l{layer}"]
        b_ih = state.get(f"bias_ih_l{layer}", torch.zeros(3 * hid, dtype=x.dtype))
        b_hh = state.get(f"bias_hh_l{layer}", torch.zeros(3 * hid, dtype=x.dtype))
        (w_ir, w_iz, w_in), (w_hr, w_hz, w_hn) = w_ih.split(hid), w_hh.split(hid)
        (b_ir, b_iz, b_in), (b_hr, b_hz, b_hn) = b_ih.split(hid), b_hh.split(hid)
        h, outs = h0[layer], []
        for t in range(seq.shape[1]):
            xt = seq[:, t]
            r = torch.sigmoid(xt @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
            z = torch.sigmoid(xt @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
            if reset_after:
                n = torch.tanh(xt @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
            else:
                n = torch.tanh(xt @ w_in.T + b_in + (r * h) @ w_hn.T + b_hn)
            h = (1 - z) * n + z * h
            outs.append(h)
        seq = torch.stack(outs, 1)
        h_n.append(h)
    return seq, torch.stack(h_n)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("layers,shape,bias", [(1, (3, 5, 4, 6), True), (2, (2, 3, 3, 4), True),
                                               (2, (1, 1, 2, 1), False)])
def test_each_variant_follows_its_equations(rng, reset_after, layers, shape, bias):
    n, t, f, h = shape
    ours = nn.GRU(f, h, layers, bias=bias, reset_after=reset_after, dtype=np.float64)
    x, h0 = rng.standard_normal((n, t, f)), rng.standard_normal((layers, n, h))
    y = ours(x, h0)
    dy, dh_n = rng.standard_normal(y.shape), rng.standard_normal(h0.shape)
    dx = ours.backward(dy, dh_n)

    state = {k: torch.from_numpy(v).requires_grad_(True) for k, v in ours.state_dict().items()}
    tx, th0 = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(h0).requires_grad_(True)
    ty, thn = equations(state, tx, th0, reset_after)
    ((ty * torch.from_numpy(dy)).sum() + (thn * torch.from_numpy(dh_n)).sum()).backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.h_n, thn.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.dh0, th0.grad.numpy(), atol=1e-12)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, state[name].grad.numpy(), atol=1e-12, err_msg=name)


def test_the_variants_differ_and_the_default_is_pytorchs(rng):
    a, b = nn.GRU(3, 4, dtype=np.float64), nn.GRU(3, 4, reset_after=False, dtype=np.float64)
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((2, 5, 3))
    assert a.reset_after is True and not np.allclose(a(x), b(x))
    tnet = torch.nn.GRU(3, 4, batch_first=True).double()
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in a.state_dict().items()})
    np.testing.assert_allclose(a(x), tnet(torch.from_numpy(x))[0].detach().numpy(), atol=1e-12)
    assert "reset_after=False" in repr(b) and "reset_after" not in repr(a)
    with pytest.raises(TypeError, match="reset_after must be True or False"):
        nn.GRU(3, 4, reset_after="no")


@pytest.mark.parametrize("layers,n,t", [(2, 2, 3), (1, 1, 1)])
def test_gradcheck_reset_before(rng, layers, n, t):
    m = nn.GRU(3, 2, layers, reset_after=False)
    report = gradcheck(m, rng.standard_normal((n, t, 3)))
    assert report.ok and len(report.checks) == 1 + 4 * layers


def test_reset_before_on_every_backend_matches_numpy(backend, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    ref = nn.GRU(5, 6, 2, reset_after=False)
    m = nn.GRU(5, 6, 2, reset_after=False, backend=backend)
    m.load_state_dict(ref.state_dict())
    y_ref, y = ref(x), m(backend.asarray(x))
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, dx = ref.backward(dy), m.backward(backend.asarray(dy))
    np.testing.assert_allclose(backend.asnumpy(y), y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.asnumpy(dx), dx_ref, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(backend.asnumpy(p.grad), q.grad, rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_rows_example_trains_the_notes_gru(capsys):
    import importlib.util
    from pathlib import Path
    pytest.importorskip("sklearn")
    path = Path(__file__).resolve().parents[1] / "examples" / "mnist_rows.py"
    spec = importlib.util.spec_from_file_location("mnist_rows", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.build("gru-reset-before", 8, 1, None)
    assert model[1].reset_after is False
    acc = mod.main(["--cell", "gru-reset-before", "--hidden", "32", "--epochs", "8", "--device", "cpu"])
    assert acc >= 0.90 and "GRU-RESET-BEFORE" in capsys.readouterr().out
