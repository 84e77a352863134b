"""Models a layer chain cannot express, written with Modules and tensor ops, against PyTorch's gradients
(same weights, float64): a shared layer applied twice, two inputs added and multiplied, scaled dot-product
attention from exp/max/sum, a user-written RNN loop over a Linear cell, two losses summed."""
import numpy as np
import pytest

import gpunet
from gpunet import nn

torch = pytest.importorskip("torch")
F64 = np.float64


def linear_pair(rng, n_in, n_out, backend):
    """An nn.Linear and a torch.nn.Linear with the same float64 weights."""
    ours = nn.Linear(n_in, n_out, dtype=F64)
    ours.weight.data = rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
    ours.bias.data = rng.standard_normal(n_out) * 0.1
    theirs = torch.nn.Linear(n_in, n_out, dtype=torch.float64)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours.to(backend), theirs


def check_grads(backend, pairs, tensors=()):
    for ours, theirs in pairs:
        for (name, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
            np.testing.assert_allclose(backend.asnumpy(p.grad), tp.grad.numpy(), rtol=1e-10, atol=1e-12,
                                       err_msg=name)
    for ours, theirs in tensors:
        np.testing.assert_allclose(backend.asnumpy(ours.grad), theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def inputs(backend, rng, *shapes):
    arrays = [rng.standard_normal(s) for s in shapes]
    return ([gpunet.tensor(a, requires_grad=True, backend=backend) for a in arrays],
            [torch.tensor(a, requires_grad=True) for a in arrays])


def test_a_shared_layer_applied_twice(backend, rng):
    lin, tlin = linear_pair(rng, 4, 4, backend)
    head, thead = linear_pair(rng, 4, 2, backend)
    (x,), (tx,) = inputs(backend, rng, (5, 4))
    loss = head(lin(lin(x).tanh()).relu()).sum()
    tloss = thead(torch.relu(tlin(torch.tanh(tlin(tx))))).sum()
    loss.backward()
    tloss.backward()
    assert float(loss) == pytest.approx(float(tloss.detach()), rel=1e-12)
    check_grads(backend, [(lin, tlin), (head, thead)], [(x, tx)])


def test_two_inputs_whose_branches_are_added_and_multiplied(backend, rng):
    a, ta = linear_pair(rng, 3, 4, backend)
    b, tb = linear_pair(rng, 5, 4, backend)
    head, thead = linear_pair(rng, 4, 1, backend)
    (x1, x2), (t1, t2) = inputs(backend, rng, (6, 3), (6, 5))
    u, v = a(x1).sigmoid(), b(x2)
    tu, tv = torch.sigmoid(ta(t1)), tb(t2)
    loss = (head(u + v) * head(u * v) / 2).mean()
    tloss = (thead(tu + tv) * thead(tu * tv) / 2).mean()
    loss.backward()
    tloss.backward()
    check_grads(backend, [(a, ta), (b, tb), (head, thead)], [(x1, t1), (x2, t2)])


def test_scaled_dot_product_attention_from_tensor_ops(backend, rng):
    batch, steps, d = 2, 5, 4
    q, tq = linear_pair(rng, d, d, backend)
    k, tk = linear_pair(rng, d, d, backend)
    v, tv = linear_pair(rng, d, d, backend)
    (x,), (tx,) = inputs(backend, rng, (batch, steps, d))

    def project(layer, t):  # Linear takes (N, features): fold the time axis into the batch
        return layer(t.reshape(batch * steps, d)).reshape(batch, steps, d)

    scores = project(q, x) @ project(k, x).transpose(0, 2, 1) / np.sqrt(d)
    e = (scores - scores.max(axis=-1, keepdims=True)).exp()
    out = (e / e.sum(axis=-1, keepdims=True)) @ project(v, x)
    w = rng.standard_normal(out.shape)
    (out * backend.asarray(w)).sum().backward()
    tout = torch.softmax(tq(tx) @ tk(tx).transpose(1, 2) / np.sqrt(d), dim=-1) @ tv(tx)
    (tout * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    check_grads(backend, [(q, tq), (k, tk), (v, tv)], [(x, tx)])


def test_a_user_written_rnn_loop_over_a_linear_cell(backend, rng):
    n, steps, f, h = 3, 6, 2, 4
    cell_x, tcell_x = linear_pair(rng, f, h, backend)
    cell_h, tcell_h = linear_pair(rng, h, h, backend)
    head, thead = linear_pair(rng, h, 3, backend)
    (x,), (tx,) = inputs(backend, rng, (n, steps, f))
    labels = rng.integers(0, 3, n)
    state = gpunet.tensor(np.zeros((n, h)), backend=backend)
    tstate = torch.zeros(n, h, dtype=torch.float64)
    for t in range(steps):
        state = (cell_x(x[:, t]) + cell_h(state)).tanh()
        tstate = torch.tanh(tcell_x(tx[:, t]) + tcell_h(tstate))
    loss = nn.SoftmaxCrossEntropy()(head(state), backend.asarray(labels))
    tloss = torch.nn.functional.cross_entropy(thead(tstate), torch.from_numpy(labels))
    loss.backward()
    tloss.backward()
    assert float(loss) == pytest.approx(float(tloss.detach()), rel=1e-12)
    check_grads(backend, [(cell_x, tcell_x), (cell_h, tcell_h), (head, thead)], [(x, tx)])


def test_two_losses_summed(backend, rng):
    trunk, ttrunk = linear_pair(rng, 5, 6, backend)
    cls, tcls = linear_pair(rng, 6, 3, backend)
    reg, treg = linear_pair(rng, 6, 2, backend)
    (x,), (tx,) = inputs(backend, rng, (4, 5))
    labels, target = rng.integers(0, 3, 4), rng.standard_normal((4, 2))
    f = trunk(x).relu()
    loss = nn.SoftmaxCrossEntropy()(cls(f), backend.asarray(labels)) + 0.5 * nn.MSELoss()(reg(f), backend.asarray(target))
    tf = torch.relu(ttrunk(tx))
    tloss = (torch.nn.functional.cross_entropy(tcls(tf), torch.from_numpy(labels))
             + 0.5 * torch.nn.functional.mse_loss(treg(tf), torch.from_numpy(target)))
    loss.backward()
    tloss.backward()
    assert float(loss) == pytest.approx(float(tloss.detach()), rel=1e-12)
    check_grads(backend, [(trunk, ttrunk), (cls, tcls), (reg, treg)], [(x, tx)])


def test_lstm_states_carry_gradients_like_pytorch(backend, rng):
    """The recurrent layer's node: gradients from y and from the final states, and into h0/c0."""
    ours = nn.LSTM(3, 4, num_layers=2, dtype=F64)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, dtype=torch.float64)
    ours.load_state_dict({k: v.detach() for k, v in theirs.state_dict().items()})
    ours.to(backend)
    (x, h0, c0), (tx, th0, tc0) = inputs(backend, rng, (2, 5, 3), (2, 2, 4), (2, 2, 4))
    y = ours(x, h0, c0)
    loss = (y * y).sum() + ours.h_n[-1].sum() * 2 + (ours.c_n ** 2).mean()
    ty, (thn, tcn) = theirs(tx, (th0, tc0))
    tloss = (ty * ty).sum() + thn[-1].sum() * 2 + (tcn ** 2).mean()
    loss.backward()
    tloss.backward()
    check_grads(backend, [(ours, theirs)], [(x, tx), (h0, th0), (c0, tc0)])
