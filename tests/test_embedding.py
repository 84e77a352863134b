"""Embedding: lookups, row-sparse gradient accumulation (repeated ids), padding_idx, frozen tables, errors,
every backend against NumPy, PyTorch interchange, and an Embedding -> GRU -> Linear model end to end."""
import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.gradcheck import gradcheck

try:
    import torch
except ImportError:  # optional third opinion
    torch = None


def test_lookup_and_repeated_ids_accumulate(rng):
    emb = nn.Embedding(6, 3)
    ids = np.array([[1, 4, 1], [5, 1, 0]])
    y = emb(ids)
    assert y.shape == (2, 3, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y, emb.weight.data[ids])
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert emb.backward(dy) is None  # integer ids have no gradient
    expect = np.zeros((6, 3), np.float32)
    for (i, j), k in np.ndenumerate(ids):
        expect[k] += dy[i, j]
    np.testing.assert_allclose(emb.weight.grad, expect, rtol=1e-6)
    assert not emb.weight.grad[[2, 3]].any()  # rows never looked up get nothing
    emb(ids)
    emb.backward(dy)  # a second backward accumulates
    np.testing.assert_allclose(emb.weight.grad, 2 * expect, rtol=1e-6)


def test_padding_idx_and_frozen_table(rng):
    emb = nn.Embedding(5, 2, padding_idx=-1)
    assert emb.padding_idx == 4 and not emb.weight.data[4].any()
    ids = np.array([4, 0, 4, 2])
    emb(ids)
    emb.backward(np.ones((4, 2), np.float32))
    assert not emb.weight.grad[4].any() and emb.weight.grad[0].tolist() == [1, 1]
    frozen = nn.Embedding(5, 2)
    frozen.weight.requires_grad = False
    frozen(ids)
    frozen.backward(np.ones((4, 2), np.float32))
    assert frozen.weight.grad is None


def test_errors():
    emb = nn.Embedding(4, 2)
    with pytest.raises(TypeError, match="Embedding: ids must be an integer array, got dtype float32"):
        emb(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\), got values in \[-1, 2\]"):
        emb(np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\), got values in \[0, 4\]"):
        emb(np.array([0, 4]))
    emb(np.array([[0, 1]], np.int32))  # any integer dtype
    with pytest.raises(ValueError, match=r"expected dy of shape \(1, 2, 2\)"):
        emb.backward(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="padding_idx must lie in"):
        nn.Embedding(4, 2, padding_idx=4)
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer"):
        nn.Embedding(4, 0)
    assert repr(nn.Embedding(4, 2, padding_idx=0)) == "Embedding(4, 2, padding_idx=0)"


def test_every_backend_matches_numpy(backend, rng):
    ref = nn.Embedding(50, 4)
    emb = nn.Embedding(50, 4, backend=backend)
    emb.load_state_dict(ref.state_dict())
    ids = rng.integers(0, 50, size=(8, 30))  # many repeats
    dy = rng.standard_normal((8, 30, 4)).astype(np.float32)
    np.testing.assert_array_equal(backend.asnumpy(emb(backend.asarray(ids))), ref(ids))
    emb.backward(backend.asarray(dy))
    ref.backward(dy)
    np.testing.assert_allclose(backend.asnumpy(emb.weight.grad), ref.weight.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_matches_torch(rng):
    ours = nn.Embedding(10, 3, padding_idx=2)
    t = torch.nn.Embedding(10, 3, padding_idx=2)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    ids = rng.integers(0, 10, size=(4, 7))
    dy = rng.standard_normal((4, 7, 3)).astype(np.float32)
    ty = t(torch.from_numpy(ids))
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(ours(ids), ty.detach().numpy())
    ours.backward(dy)
    np.testing.assert_allclose(ours.weight.grad, t.weight.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_sequence_model_gradcheck_and_training(rng):
    """Embedding -> GRU -> last step -> Linear: parameter gradients check out, and it learns a toy task
    (is token 1 anywhere in the sequence?) with clipping on."""
    model = nn.Sequential(nn.Embedding(5, 3), nn.GRU(3, 4), nn.LastStep(), nn.Linear(4, 2))
    ids = rng.integers(0, 5, size=(3, 4))
    report = gradcheck(model, ids)
    assert report.ok and [c.name for c in report.checks][0] == "0.weight"

    ids = rng.integers(0, 5, size=(256, 6))
    labels = (ids == 1).any(axis=1).astype(np.int64)
    model = nn.Sequential(nn.Embedding(5, 8), nn.GRU(8, 16), nn.LastStep(), nn.Linear(16, 2))
    opt, loss_fn = optim.Adam(model.parameters(), lr=0.02), nn.SoftmaxCrossEntropy()
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn(model(ids), labels)
        model.backward(loss_fn.backward())
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert float(loss) < 0.1
