"""gpunet.functional: values against direct formulas (and PyTorch when installed), dtype preservation,
numerical stability, label validation, and gradients by central differences."""
import numpy as np
import pytest

from gpunet import functional as F
from gpunet.gradcheck import gradcheck
from gpunet.arrays import relu_into

try:
    import torch
except ImportError:  # optional cross-check
    torch = None


def away_from_zero(rng, shape, margin=0.05):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin * 2, x)


ELEMENTWISE = {  # name: (forward, backward taking (dy, x, y), reference)
    "relu": (F.relu, lambda dy, x, y: F.relu_backward(dy, y), lambda x: np.maximum(x, 0)),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), lambda dy, x, y: F.leaky_relu_backward(dy, x, 0.1),
                   lambda x: np.where(x > 0, x, 0.1 * x)),
    "elu": (lambda x: F.elu(x, 1.3), lambda dy, x, y: F.elu_backward(dy, x, y, 1.3),
            lambda x: np.where(x > 0, x, 1.3 * np.expm1(x))),
    "sigmoid": (F.sigmoid, lambda dy, x, y: F.sigmoid_backward(dy, y), lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (F.tanh, lambda dy, x, y: F.tanh_backward(dy, y), np.tanh),
}


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_values_dtype_and_gradients(rng, name):
    fwd, bwd, ref = ELEMENTWISE[name]
    x = away_from_zero(rng, (3, 4))
    y32 = fwd(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ref(x), rtol=1e-6, atol=1e-7)
    assert bwd(np.ones((3, 4), np.float32), x.astype(np.float32), y32).dtype == np.float32
    cache = {}

    def forward(a):
        cache["x"], cache["y"] = a, fwd(a)
        return cache["y"]
    gradcheck((forward, lambda dy: bwd(dy, cache["x"], cache["y"])), x)


def test_prelu_shared_and_per_channel(rng):
    x = away_from_zero(rng, (2, 3, 2))
    for w in (np.array([0.3]), np.array([0.1, -0.2, 0.5])):
        wb = w if w.size == 1 else w.reshape(1, 3, 1)
        np.testing.assert_allclose(F.prelu(x, w), np.where(x > 0, x, wb * x))
        gradcheck((F.prelu, lambda dy: F.prelu_backward(dy, x, w)), (x, w))
    assert F.prelu(x.astype(np.float32), np.array([0.3], np.float32)).dtype == np.float32


def test_linear(rng):
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal(5)
    np.testing.assert_allclose(F.linear(x, w, b), x @ w.T + b)
    np.testing.assert_allclose(F.linear(x, w), x @ w.T)
    gradcheck((F.linear, lambda dy: F.linear_backward(dy, x, w)), (x, w, b))
    assert F.linear(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32)).dtype == np.float32
    assert F.linear_backward(np.ones((4, 5)), x, w, has_bias=False)[2] is None


@pytest.mark.parametrize("fn,bwd", [(F.softmax, F.softmax_backward), (F.log_softmax, F.log_softmax_backward)])
def test_softmax_family(rng, fn, bwd):
    x = rng.standard_normal((3, 5))
    e = np.exp(x - x.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(fn(x), p if fn is F.softmax else np.log(p), rtol=1e-12)
    cache = {}

    def forward(a):
        cache["y"] = fn(a)
        return cache["y"]
    gradcheck((forward, lambda dy: bwd(dy, cache["y"])), x)
    big = np.array([[1000.0, 0.0, -1000.0]], np.float32)  # stable: no overflow, exact extremes
    with np.errstate(over="raise", invalid="raise"):
        out = fn(big)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [[1, 0, 0]] if fn is F.softmax else [[0, -1000, -2000]], atol=1e-6)
    np.testing.assert_allclose(fn(x, axis=0).sum(0) if fn is F.softmax else np.exp(fn(x, axis=0)).sum(0), 1.0)


def test_softmax_cross_entropy_values_stability_and_gradient(rng):
    logits = rng.standard_normal((6, 4))
    labels = np.array([0, 3, 1, 1, 2, 0])
    lse = np.log(np.exp(logits).sum(1))
    loss = F.softmax_cross_entropy(logits, labels)
    assert np.shape(loss) == ()
    assert float(loss) == pytest.approx(np.mean(lse - logits[np.arange(6), labels]), rel=1e-12)
    gradcheck((lambda z: F.softmax_cross_entropy(z, labels),
               lambda d: F.softmax_cross_entropy_backward(F.log_softmax(logits, axis=1), labels, d)), logits)
    big = np.array([[1e4, 0.0], [0.0, 1e4]], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        loss32 = F.softmax_cross_entropy(big, np.array([1, 1]))
    assert loss32.dtype == np.float32 and float(loss32) == pytest.approx(5e3)
    for label_dtype in (np.int32, np.int64, np.uint8):
        F.softmax_cross_entropy(logits, labels.astype(label_dtype))


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_losses_match_pytorch(rng):
    tf = torch.nn.functional
    logits, labels = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    t, y = rng.uniform(0, 1, (5, 3)), rng.standard_normal((5, 3))
    assert float(F.softmax_cross_entropy(logits, labels)) == pytest.approx(
        tf.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item(), rel=1e-12)
    z = np.array([[-200.0, -3.0, 0.0, 3.0, 200.0]])
    tz = np.array([[0.0, 1.0, 0.5, 0.0, 1.0]])
    assert float(F.bce_with_logits(z, tz)) == pytest.approx(
        tf.binary_cross_entropy_with_logits(torch.from_numpy(z), torch.from_numpy(tz)).item(), rel=1e-12)
    assert float(F.mse_loss(y, t)) == pytest.approx(tf.mse_loss(torch.from_numpy(y), torch.from_numpy(t)).item())
    for name, ours in [("elu", F.elu(y)), ("sigmoid", F.sigmoid(y)), ("log_softmax", F.log_softmax(y))]:
        ref = getattr(tf, name)(torch.from_numpy(y), **({"dim": -1} if name == "log_softmax" else {}))
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("labels,exc,msg", [
    (np.array([0.0, 1.0]), TypeError, r"labels must be an integer array of class indices, got dtype float64"),
    (np.array([True, False]), TypeError, "labels must be an integer array of class indices, got dtype bool"),
    (np.array([[0], [1]]), ValueError, r"expected labels of shape \(2,\) for logits \(2, 3\), got \(2, 1\)"),
    (np.array([0, 1, 2]), ValueError, r"expected labels of shape \(2,\)"),
    (np.array([0, 3]), ValueError, r"labels must lie in \[0, 3\) for 3 classes, got values in \[0, 3\]"),
    (np.array([-1, 2]), ValueError, r"labels must lie in \[0, 3\) for 3 classes, got values in \[-1, 2\]"),
])
def test_cross_entropy_label_validation(labels, exc, msg):
    with pytest.raises(exc, match="softmax_cross_entropy: " + msg):
        F.softmax_cross_entropy(np.zeros((2, 3), np.float32), labels)


def test_cross_entropy_range_check_can_be_skipped():
    logits = np.zeros((2, 3), np.float32)
    assert float(F.softmax_cross_entropy(logits, np.array([0, 2]), check_range=False)) == pytest.approx(np.log(3))
    with pytest.raises(TypeError, match="got dtype float64"):  # dtype and shape are still checked
        F.softmax_cross_entropy(logits, np.array([0.0, 2.0]), check_range=False)


def test_cross_entropy_logits_must_be_2d():
    with pytest.raises(ValueError, match=r"expected logits of shape \(N, C\), got \(2, 3, 1\)"):
        F.softmax_cross_entropy(np.zeros((2, 3, 1)), np.array([0, 1]))


def test_bce_with_logits_stable_and_gradient(rng):
    z = np.array([-1000.0, -20.0, 0.0, 20.0, 1000.0], np.float32)
    t = np.array([0, 1, 1, 0, 1], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        loss = F.bce_with_logits(z, t)
    assert loss.dtype == np.float32
    assert float(loss) == pytest.approx((0 + 20 + np.log(2) + 20 + 0) / 5, rel=1e-6)
    x, tt = rng.standard_normal((3, 4)), rng.uniform(0, 1, (3, 4))
    gradcheck((F.bce_with_logits, lambda d: (F.bce_with_logits_backward(x, tt, d),)), (x, tt))
    with pytest.raises(ValueError, match=r"bce_with_logits: target shape \(3,\) does not match input shape \(5,\)"):
        F.bce_with_logits(z, t[:3])


def test_mse(rng):
    y, t = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    assert float(F.mse_loss(y, t)) == pytest.approx(np.mean((y - t) ** 2))
    gradcheck((F.mse_loss, lambda d: (F.mse_loss_backward(y, t, d), -F.mse_loss_backward(y, t, d))), (y, t))
    assert F.mse_loss(y.astype(np.float32), t.astype(np.float32)).dtype == np.float32


def test_flatten():
    x = np.arange(24.0).reshape(2, 3, 4)
    y = F.flatten(x)
    assert y.shape == (2, 12) and np.shares_memory(x, y)
    assert F.flatten_backward(y, x.shape).shape == (2, 3, 4)


def test_dropout_function(numpy_backend):
    x = np.full((40, 25), 2.0, np.float32)
    y, mask = F.dropout(x, 0.3, seed=5, counter=0, backend=numpy_backend)
    assert y.dtype == np.float32 and mask.dtype == np.float32
    np.testing.assert_array_equal(y, x * mask)
    assert set(np.unique(mask)) <= {0.0, np.float32(1 / 0.7)}
    y2, _ = F.dropout(x, 0.3, seed=5, counter=0, backend=numpy_backend)
    np.testing.assert_array_equal(y, y2)  # reproducible from (seed, counter)
    np.testing.assert_array_equal(F.dropout_backward(x, mask), y)
    y3, _ = F.dropout(x, 1.0, seed=5, counter=0, backend=numpy_backend)
    assert not y3.any()
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\], got -0.1"):
        F.dropout(x, -0.1, 0, 0, numpy_backend)


def test_relu_backward_masks_exactly_and_never_leaks_non_finite_dy(rng):
    y = np.maximum(rng.standard_normal((4, 3, 5, 5)), 0).astype(np.float32)
    y[0, 0, 0, :2] = 0.0                                        # the kink: gradient 0
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = F.relu_backward(dy, y)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, np.where(y > 0, dy, 0))  # the fast path is exact
    dy[y <= 0] = np.inf                                          # non-finite where the mask is off
    dy[0, 1][y[0, 1] <= 0] = np.nan
    dx = F.relu_backward(dy, y)
    assert (dx[y <= 0] == 0).all() and np.isfinite(dx).all()
    np.testing.assert_array_equal(dx[y > 0], dy[y > 0])


def test_relu_backward_chunks_and_overflowing_sums(rng, monkeypatch):
    """Several chunks (the last one short) and a non-contiguous dy give dy * (y > 0) exactly; a finite
    dy whose sum overflows takes the slow path and still gives the exact product."""
    import gpunet.arrays
    monkeypatch.setattr(gpunet.arrays, "RELU_CHUNK", 7)
    y = np.maximum(rng.standard_normal((3, 2, 5, 4)), 0).astype(np.float32)
    dy = np.asfortranarray(rng.standard_normal(y.shape).astype(np.float32))
    np.testing.assert_array_equal(F.relu_backward(dy, y), np.where(y > 0, dy, 0))
    big = np.full(y.shape, 3e38, dtype=np.float32)
    assert not np.isfinite(np.einsum("i->", big.reshape(-1)))
    dx = F.relu_backward(big, y)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, np.where(y > 0, big, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [9, 81, 4096, 4097, 3 * 4096 + 11, 81 * 64])
def test_relu_is_bitwise_np_maximum_on_every_path(rng, dtype, size):
    """relu (the zero-row fast loop for contiguous arrays, NumPy's scalar loop otherwise) and the
    in-place relu_ give np.maximum(x, 0) bit for bit, signed zeros and both signs of NaN included."""
    x = rng.standard_normal(size).astype(dtype)
    x[:8] = [-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, -1.0, 2.0]
    x[-1] = -np.nan
    want = np.maximum(x, 0)
    bits = lambda a: a.view(np.int32 if dtype == np.float32 else np.int64)  # noqa: E731
    got = F.relu(x)
    assert got.dtype == dtype and got is not x
    np.testing.assert_array_equal(bits(got), bits(want))
    strided = np.stack([x, x], axis=1)[:, 0]                        # not contiguous: the scalar loop
    np.testing.assert_array_equal(bits(F.relu(strided)), bits(want))
    if size % 81 == 0:                                               # strided 9x9 planes: the zero plane
        planes = np.stack([x.reshape(-1, 9, 9)] * 2, axis=0).swapaxes(0, 1)
        out = np.empty(planes.shape, dtype=dtype)
        relu_into(out, planes)
        np.testing.assert_array_equal(bits(out[:, 1].reshape(-1)), bits(want))
    y = x.reshape(1, -1).copy()
    assert F.relu_(y) is y
    np.testing.assert_array_equal(bits(y.reshape(-1)), bits(want))
