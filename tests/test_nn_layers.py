"""Every layer against a straightforward reference (and PyTorch when installed), over every backend
(non-NumPy results compared with NumPy's), plus float64 gradient checks on edge shapes."""
import numpy as np
import pytest

from gpunet import nn
from gpunet.backend import DeviceError
from gpunet.gradcheck import gradcheck

try:
    import torch
except ImportError:  # optional third opinion
    torch = None


@pytest.fixture
def be(backend):
    """Every backend under test (NumPy, emulator, CuPy), by a short name."""
    return backend


def to_host(be, a):
    return be.asnumpy(a)


def tie_free(rng, shape, scale=0.1):
    """A shuffled linspace (Chainer's rule): all values distinct, gaps of `scale`, centred on 0."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2 + 0.5) * scale


# --- references ---------------------------------------------------------------------------------------

def ref_conv(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, co, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return y + (0 if b is None else b.reshape(1, -1, 1, 1))


def ref_pool(x, k, s, p, kind):
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    n, c, h, w = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.sum(axis=(2, 3)) / (kh * kw)
    return y


# --- Conv2d -----------------------------------------------------------------------------------------

CONV_CASES = [  # (N, C_in, H, W), C_out, kernel, stride, padding
    ((2, 3, 5, 5), 4, 3, 1, 1),
    ((1, 1, 1, 1), 2, 1, 1, 0),          # batch 1, 1x1 image, 1x1 kernel
    ((2, 2, 5, 7), 3, (3, 2), (2, 1), (1, 0)),  # odd, non-square, stride > 1
    ((1, 1, 6, 6), 1, 4, 2, 1),          # kernel > stride, single channel
]


@pytest.mark.parametrize("shape,cout,k,s,p", CONV_CASES)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_conv2d_matches_reference(be, rng, shape, cout, k, s, p, activation):
    layer = nn.Conv2d(shape[1], cout, k, stride=s, padding=p, activation=activation)
    layer.bias.data[:] = rng.standard_normal(cout)
    x = rng.standard_normal(shape).astype(np.float32)
    want = ref_conv(x.astype(np.float64), layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64),
                    layer.stride, layer.padding)
    if activation:
        want = np.maximum(want, 0)
    layer.to(be)
    y = layer(be.asarray(x))
    assert y.dtype == np.float32
    np.testing.assert_allclose(to_host(be, y), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,cout,k,s,p", CONV_CASES)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_conv2d_gradcheck(rng, shape, cout, k, s, p, activation):
    layer = nn.Conv2d(shape[1], cout, k, stride=s, padding=p, activation=activation, dtype=np.float64)
    layer.bias.data[:] = rng.standard_normal(cout) * 0.1
    pre = nn.Conv2d(shape[1], cout, k, stride=s, padding=p, dtype=np.float64)
    pre.load_state_dict(layer.state_dict())
    for _ in range(50):  # keep every pre-activation clear of ReLU's kink
        x = rng.standard_normal(shape)
        if activation is None or np.abs(pre.eval()(x)).min() > 1e-3:
            break
    gradcheck(layer, x)


def test_conv2d_without_bias_and_gradients_accumulate(be, rng):
    layer = nn.Conv2d(2, 3, 3, padding=1, bias=False).to(be)
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    x = be.asarray(rng.standard_normal((2, 2, 4, 4)).astype(np.float32))
    dy = be.xp.ones((2, 3, 4, 4), dtype=np.float32)
    layer(x)
    layer.backward(dy)
    g1 = to_host(be, layer.weight.grad).copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(to_host(be, layer.weight.grad), 2 * g1, rtol=1e-5)


def test_conv2d_device_results_match_numpy(device_backend, rng):
    """The kernels (emulator / CuPy) agree with the NumPy path on forward and all gradients."""
    ref = nn.Conv2d(3, 4, 3, stride=2, padding=1, activation="relu")
    dev = nn.Conv2d(3, 4, 3, stride=2, padding=1, activation="relu")
    dev.load_state_dict(ref.state_dict())
    dev.to(device_backend)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    y = ref(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yd = dev(device_backend.asarray(x))
    np.testing.assert_allclose(device_backend.asnumpy(yd), y, rtol=1e-5, atol=1e-5)
    dx, dxd = ref.backward(dy), dev.backward(device_backend.asarray(dy))
    np.testing.assert_allclose(device_backend.asnumpy(dxd), dx, rtol=1e-4, atol=1e-5)
    for (n, p), (_, q) in zip(ref.named_parameters(), dev.named_parameters()):
        np.testing.assert_allclose(device_backend.asnumpy(q.grad), p.grad, rtol=1e-4, atol=1e-4, err_msg=n)


def test_conv2d_shape_dtype_and_device_errors():
    layer = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match=r"Conv2d: expected input of shape \(N, 3, H, W\), got \(8, 1, 28, 28\)"):
        layer(np.zeros((8, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: expected input of shape \(N, C, H, W\), got \(3, 28, 28\)"):
        layer(np.zeros((3, 28, 28), np.float32))
    with pytest.raises(TypeError, match="Conv2d: input dtype float64 does not match the parameters' float32"):
        layer(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="kernel"):
        layer(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="activation must be None or 'relu'"):
        nn.Conv2d(3, 8, 3, activation="gelu")


class _FakeCupyArray:
    """Looks like a CuPy array to Backend.check (which goes by the type's module)."""
    shape = (2, 3, 4, 4)
    ndim = 4
    dtype = np.dtype(np.float32)


_FakeCupyArray.__module__ = "cupy._core.core"


@pytest.mark.parametrize("layer", [
    nn.Conv2d(3, 2, 3), nn.Linear(3, 2), nn.BatchNorm2d(3), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.GlobalAvgPool2d(),
    nn.ReLU(), nn.LeakyReLU(), nn.PReLU(), nn.ELU(), nn.Sigmoid(), nn.Tanh(), nn.Dropout(0.5), nn.Flatten(),
    nn.Identity(), nn.Sequential(nn.ReLU()), nn.Residual(nn.ReLU()), nn.Concat(nn.ReLU()),
], ids=lambda m: type(m).__name__)
def test_every_layer_refuses_arrays_from_another_device(layer):
    name = type(layer).__name__ if not isinstance(layer, nn.Sequential) else "ReLU"
    with pytest.raises(DeviceError, match=f"{name} input: got a CuPy \\(cuda\\) array but the model is on 'numpy'"):
        layer(_FakeCupyArray())


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("shape,cout,k,s,p", CONV_CASES)
def test_conv2d_and_pools_match_torch(rng, shape, cout, k, s, p):
    """Forward and every gradient against torch.nn.functional (float64), on the NumPy backend."""
    layer = nn.Conv2d(shape[1], cout, k, stride=s, padding=p, dtype=np.float64)
    layer.bias.data[:] = rng.standard_normal(cout)
    x = rng.standard_normal(shape)
    tx = torch.from_numpy(x).requires_grad_(True)
    tw, tb = (torch.from_numpy(a.data.copy()).requires_grad_(True) for a in (layer.weight, layer.bias))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=layer.stride, padding=layer.padding)
    y = layer(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, tw.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, tb.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("shape,k,s,p", [((2, 3, 4, 4), 2, None, 0), ((1, 1, 5, 7), 3, 2, 1),
                                         ((2, 1, 6, 5), (3, 2), (1, 2), (1, 0))])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pools_match_torch(rng, shape, k, s, p, kind):
    layer = (nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(k, stride=s, padding=p)
    x = tie_free(rng, shape)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = getattr(torch.nn.functional, f"{kind}_pool2d")(tx, layer.kernel_size, layer.stride, layer.padding)
    y = layer(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-12, atol=1e-14)


# --- Linear -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,fin,fout", [(3, 4, 5), (1, 1, 1)])
def test_linear_matches_reference_and_gradcheck(be, rng, n, fin, fout):
    layer = nn.Linear(fin, fout)
    layer.bias.data[:] = rng.standard_normal(fout)
    x = rng.standard_normal((n, fin)).astype(np.float32)
    want = x.astype(np.float64) @ layer.weight.data.T.astype(np.float64) + layer.bias.data
    layer.to(be)
    y = layer(be.asarray(x))
    assert y.dtype == np.float32
    np.testing.assert_allclose(to_host(be, y), want, rtol=1e-5, atol=1e-5)
    if be.name == "numpy":
        gradcheck(layer, x)
        gradcheck(nn.Linear(fin, fout, bias=False), x)


def test_linear_shape_error():
    with pytest.raises(ValueError, match=r"Linear: expected input of shape \(N, 784\), got \(8, 1, 28, 28\)"):
        nn.Linear(784, 10)(np.zeros((8, 1, 28, 28), np.float32))


# --- BatchNorm ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm2d, (3, 2, 4, 5)), (nn.BatchNorm2d, (1, 1, 2, 1)),
                                       (nn.BatchNorm1d, (4, 3)), (nn.BatchNorm1d, (2, 1))])
def test_batchnorm_train_eval_and_running_stats(be, rng, cls, shape):
    c = shape[1]
    layer = cls(c, momentum=0.1)
    layer.weight.data[:] = rng.uniform(0.5, 1.5, c)
    layer.bias.data[:] = rng.standard_normal(c)
    layer.to(be)
    x = rng.standard_normal(shape).astype(np.float32) * 3 + 1
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    bshape = (1, c) + (1,) * (len(shape) - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    g, b = (to_host(be, p.data).reshape(bshape) for p in (layer.weight, layer.bias))
    y = layer(be.asarray(x))
    np.testing.assert_allclose(to_host(be, y), (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-5) * g + b,
                               rtol=1e-4, atol=1e-4)
    m = x.size // c
    np.testing.assert_allclose(to_host(be, layer.running_mean), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_host(be, layer.running_var), 0.9 + 0.1 * var * m / (m - 1), rtol=1e-5)
    assert int(layer.num_batches_tracked) == 1
    layer.eval()
    rm, rv = to_host(be, layer.running_mean).reshape(bshape), to_host(be, layer.running_var).reshape(bshape)
    y = layer(be.asarray(x))
    np.testing.assert_allclose(to_host(be, y), (x - rm) / np.sqrt(rv + 1e-5) * g + b, rtol=1e-4, atol=1e-4)
    assert int(layer.num_batches_tracked) == 1  # eval does not count


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm2d, (2, 3, 3, 2)), (nn.BatchNorm2d, (1, 2, 1, 3)),
                                       (nn.BatchNorm1d, (5, 2))])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_gradcheck_train_mode(rng, cls, shape, affine):
    layer = cls(shape[1], affine=affine, dtype=np.float64)
    if affine:
        layer.weight.data[:] = rng.uniform(0.5, 1.5, shape[1])
        layer.bias.data[:] = rng.standard_normal(shape[1])
    gradcheck(layer, rng.standard_normal(shape))


def test_batchnorm_momentum_none_is_cumulative_average(rng):
    layer = nn.BatchNorm1d(2, momentum=None)
    xs = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(3)]
    for x in xs:
        layer(x)
    np.testing.assert_allclose(layer.running_mean, np.mean([x.mean(0) for x in xs], axis=0), rtol=1e-5, atol=1e-6)


def test_batchnorm_errors_and_eval_backward():
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected input of shape \(N, 4, H, W\), got \(2, 3, 5, 5\)"):
        nn.BatchNorm2d(4)(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d: expected input of shape \(N, 4\), got \(2, 4, 1\)"):
        nn.BatchNorm1d(4)(np.zeros((2, 4, 1), np.float32))
    with pytest.raises(ValueError):  # one value per channel cannot be normalised in training
        nn.BatchNorm2d(2)(np.ones((1, 2, 1, 1), np.float32))
    layer = nn.BatchNorm2d(2).eval()
    layer(np.ones((2, 2, 3, 3), np.float32))
    with pytest.raises(RuntimeError, match=r"BatchNorm2d.backward\(\) called without a preceding forward\(\) in training"):
        layer.backward(np.ones((2, 2, 3, 3), np.float32))


# --- pooling ------------------------------------------------------------------------------------------

POOL_CASES = [  # shape, kernel, stride, padding
    ((2, 3, 4, 4), 2, None, 0),
    ((1, 1, 5, 7), 3, 2, 1),          # odd, non-square, padding, kernel > stride (overlap)
    ((1, 2, 1, 1), 1, None, 0),       # 1x1
    ((2, 1, 6, 5), (3, 2), (1, 2), (1, 0)),
]


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
@pytest.mark.parametrize("cls,kind", [(nn.MaxPool2d, "max"), (nn.AvgPool2d, "avg")])
def test_pool_matches_reference(be, rng, shape, k, s, p, cls, kind):
    layer = cls(k, stride=s, padding=p).to(be)
    x = tie_free(rng, shape).astype(np.float32)
    y = layer(be.asarray(x))
    assert y.dtype == np.float32
    np.testing.assert_allclose(to_host(be, y), ref_pool(x, layer.kernel_size, layer.stride, layer.padding, kind),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
@pytest.mark.parametrize("cls", [nn.MaxPool2d, nn.AvgPool2d])
def test_pool_gradcheck(rng, shape, k, s, p, cls):
    gradcheck(cls(k, stride=s, padding=p), tie_free(rng, shape))


def test_maxpool_overlapping_windows_accumulate(be):
    x = np.array([[[[0, 1, 0], [1, 9, 1], [0, 1, 0]]]], np.float32)  # the centre wins all four windows
    layer = nn.MaxPool2d(2, stride=1).to(be)
    layer(be.asarray(x))
    dx = layer.backward(be.xp.ones((1, 1, 2, 2), dtype=np.float32))
    np.testing.assert_array_equal(to_host(be, dx)[0, 0], [[0, 0, 0], [0, 4, 0], [0, 0, 0]])


def test_pool_errors():
    with pytest.raises(ValueError, match=r"MaxPool2d: expected input of shape \(N, C, H, W\), got \(3, 4\)"):
        nn.MaxPool2d(2)(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="AvgPool2d: padding .* at most half"):
        nn.AvgPool2d(2, padding=2)(np.zeros((1, 1, 4, 4), np.float32))


def test_global_avg_pool(be, rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    layer = nn.GlobalAvgPool2d().to(be)
    y = layer(be.asarray(x))
    assert y.shape == (2, 3) and y.dtype == np.float32
    np.testing.assert_allclose(to_host(be, y), x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    gradcheck(nn.GlobalAvgPool2d(), rng.standard_normal((1, 2, 3, 1)))


# --- activations, dropout, shape layers ------------------------------------------------------------

ACTIVATIONS = [
    (lambda: nn.ReLU(), lambda x: np.maximum(x, 0)),
    (lambda: nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    (lambda: nn.PReLU(), lambda x: np.where(x > 0, x, 0.25 * x)),
    (lambda: nn.ELU(0.7), lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1))),
    (lambda: nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    (lambda: nn.Tanh(), np.tanh),
]


@pytest.mark.parametrize("make,ref", ACTIVATIONS, ids=["ReLU", "LeakyReLU", "PReLU", "ELU", "Sigmoid", "Tanh"])
def test_activation_matches_reference_and_gradcheck(be, rng, make, ref):
    x = tie_free(rng, (2, 3, 2, 2), 0.25)  # no element at 0 (the kinks)
    y = make().to(be)(be.asarray(x.astype(np.float32)))
    assert y.dtype == np.float32
    np.testing.assert_allclose(to_host(be, y), ref(x), rtol=1e-6, atol=1e-6)
    if be.name == "numpy":
        gradcheck(make(), x)
        gradcheck(make(), tie_free(rng, (1, 1), 0.5) + 0.25)


def test_prelu_per_channel(rng):
    layer = nn.PReLU(3, init=0.1, dtype=np.float64)
    layer.weight.data[:] = [0.1, 0.2, -0.3]
    x = tie_free(rng, (2, 3, 2, 2), 0.25)
    np.testing.assert_allclose(layer(x), np.where(x > 0, x, x * np.array([0.1, 0.2, -0.3]).reshape(1, 3, 1, 1)))
    gradcheck(layer, x)
    gradcheck(nn.PReLU(3, dtype=np.float64), tie_free(rng, (4, 3), 0.3))
    with pytest.raises(ValueError, match=r"PReLU: expected input of shape \(N, 3, \.\.\.\), got \(2, 4\)"):
        layer(np.zeros((2, 4)))


def test_sigmoid_is_stable_for_extreme_inputs():
    x = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = nn.Sigmoid()(x)
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [[0, 1.9287e-22, 0.5, 1, 1]], rtol=1e-4)


def test_dropout_semantics(be):
    layer = nn.Dropout(0.25).to(be)
    x = be.xp.ones((64, 50), dtype=np.float32)
    y = to_host(be, layer(x))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.03
    assert layer.counter == 64 * 50 // 4
    dx = to_host(be, layer.backward(be.xp.ones((64, 50), dtype=np.float32)))
    np.testing.assert_array_equal(dx, y)  # the same mask scales the gradient
    y2 = to_host(be, layer(x))
    assert not np.array_equal(y, y2)  # the counter moved on: a fresh mask
    layer.eval()
    assert layer(x) is x
    assert nn.Dropout(0.0)(np.ones(3, np.float32)).tolist() == [1, 1, 1]
    assert nn.Dropout(1.0)(np.ones(3, np.float32)).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\]"):
        nn.Dropout(1.5)


def test_dropout_masks_agree_across_devices(device_backend):
    ref = nn.Dropout(0.5)
    dev = nn.Dropout(0.5).to(device_backend)
    dev.seed = ref.seed
    x = np.ones((3, 17), np.float32)
    for _ in range(2):
        np.testing.assert_array_equal(device_backend.asnumpy(dev(device_backend.asarray(x))), ref(x))


def test_dropout_seed_comes_from_the_backend_rng(numpy_backend):
    numpy_backend.seed(123)
    a = nn.Dropout(0.5)
    numpy_backend.seed(123)
    b = nn.Dropout(0.5)
    assert a.seed == b.seed
    x = np.ones((4, 8), np.float32)
    np.testing.assert_array_equal(a(x), b(x))


def test_dropout_gradcheck_with_fixed_mask(rng):
    gradcheck(nn.Dropout(0.4), rng.standard_normal((3, 5)))
    gradcheck(nn.Sequential(nn.Linear(4, 6, dtype=np.float64), nn.Dropout(0.5), nn.Linear(6, 2, dtype=np.float64)),
              rng.standard_normal((3, 4)))


def test_flatten_identity(be, rng):
    x = be.asarray(rng.standard_normal((2, 3, 4, 5)).astype(np.float32))
    f = nn.Flatten().to(be)
    assert f(x).shape == (2, 60)
    assert f.backward(be.xp.ones((2, 60), dtype=np.float32)).shape == (2, 3, 4, 5)
    ident = nn.Identity().to(be)
    assert ident(x) is x and (be.asnumpy(ident.backward(x)) == be.asnumpy(x)).all()
    gradcheck(nn.Flatten(), rng.standard_normal((1, 2, 1, 3)))
    gradcheck(nn.Identity(), rng.standard_normal((2, 2)))


# --- containers -------------------------------------------------------------------------------------

def test_residual_identity_and_projection_shortcut(be, rng):
    body = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    block = nn.Residual(body, activation="relu").to(be)
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    want = np.maximum(to_host(be, body(be.asarray(x))) + x, 0)
    np.testing.assert_allclose(to_host(be, block(be.asarray(x))), want, rtol=1e-5, atol=1e-6)

    proj = nn.Residual(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Conv2d(2, 4, 1, stride=2)).to(be)
    assert proj(be.asarray(x)).shape == (2, 4, 2, 2)
    assert [n for n, _ in proj.named_parameters()] == ["body.weight", "body.bias", "shortcut.weight", "shortcut.bias"]
    bad = nn.Residual(nn.Conv2d(2, 4, 3, padding=1))
    with pytest.raises(ValueError, match=r"Residual: body output \(2, 4, 4, 4\) does not match input \(identity "
                                         r"shortcut\) \(2, 2, 4, 4\)"):
        bad(x)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_residual_gradcheck(rng, activation):
    f64 = dict(dtype=np.float64)
    body = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, **f64), nn.BatchNorm2d(3, **f64), nn.Tanh(),
                         nn.Conv2d(3, 2, 1, **f64))
    gradcheck(nn.Residual(body, activation=activation), rng.standard_normal((2, 2, 3, 3)))
    proj = nn.Residual(nn.Conv2d(1, 2, 3, stride=2, padding=1, **f64), nn.Conv2d(1, 2, 1, stride=2, **f64),
                       activation=activation)
    gradcheck(proj, rng.standard_normal((1, 1, 5, 4)))


def test_concat_forward_and_gradcheck(be, rng):
    f64 = dict(dtype=np.float64)
    block = nn.Concat(nn.Conv2d(2, 3, 1, **f64), nn.Sequential(nn.Conv2d(2, 1, 3, padding=1, **f64), nn.Tanh()),
                      nn.AvgPool2d(3, stride=1, padding=1))
    x = rng.standard_normal((2, 2, 4, 3))
    y = block(x)
    assert y.shape == (2, 6, 4, 3)
    np.testing.assert_allclose(y[:, :3], getattr(block, "0")(x))
    np.testing.assert_allclose(y[:, 4:], ref_pool(x, (3, 3), (1, 1), (1, 1), "avg"), rtol=1e-12)
    gradcheck(block, x)
    dev = nn.Concat(nn.Conv2d(2, 3, 1), nn.MaxPool2d(3, stride=1, padding=1)).to(be)
    assert dev(be.asarray(x.astype(np.float32))).shape == (2, 5, 4, 3)
    with pytest.raises(ValueError, match=r"Concat: branch 1 output \(2, 2, 2, 1\) does not match branch 0 output "
                                         r"\(2, 3, 4, 3\) outside the channel axis 1"):
        nn.Concat(nn.Conv2d(2, 3, 1), nn.MaxPool2d(2))(x.astype(np.float32))


def test_sequential_container_protocol():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and seq[0] is a and seq[-1] is c and list(seq) == [a, b, c]
    assert isinstance(seq[1:], nn.Sequential) and list(seq[1:]) == [b, c]
    seq.append(nn.Sigmoid())
    assert len(seq) == 4 and [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(TypeError, match="Sequential: child '1' is int, not a Module"):
        nn.Sequential(a, 3)


def test_small_cnn_gradcheck_end_to_end(rng):
    """Conv+ReLU, BN, max-pool, Residual, GlobalAvgPool, Linear and the loss, all in float64."""
    f64 = dict(dtype=np.float64)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, activation="relu", **f64), nn.BatchNorm2d(3, **f64), nn.MaxPool2d(2),
        nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, **f64), nn.ELU()), activation=None),
        nn.GlobalAvgPool2d(), nn.Linear(3, 4, **f64))
    x = tie_free(rng, (2, 1, 4, 6), 0.05)
    gradcheck(model, x, max_checks=20)
    labels = np.array([1, 3])
    crit = nn.SoftmaxCrossEntropy()
    gradcheck(crit, (model(x), labels))


def test_gradcheck_on_every_backend(be, rng):
    """The device kernels' float64 backward passes through conv+ReLU, BN, both pools, Dropout, Linear."""
    f64 = dict(dtype=np.float64)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, activation="relu", **f64), nn.BatchNorm2d(2, **f64), nn.MaxPool2d(2),
        nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(2, 3, **f64)).to(be)
    gradcheck(model, be.asarray(tie_free(rng, (2, 1, 4, 4))), max_checks=10)


# --- losses -------------------------------------------------------------------------------------------

def test_losses_gradcheck(rng):
    gradcheck(nn.SoftmaxCrossEntropy(), (rng.standard_normal((4, 5)), np.array([0, 4, 2, 2])))
    gradcheck(nn.SoftmaxCrossEntropy(), (rng.standard_normal((1, 1)), np.array([0])))
    gradcheck(nn.BCEWithLogits(), (rng.standard_normal((3, 2)), rng.uniform(0, 1, (3, 2))))
    gradcheck(nn.MSELoss(), (rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2))))


def test_losses_on_every_backend(be, rng):
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    labels = np.array([2, 0, 1, 1])
    crit = nn.SoftmaxCrossEntropy()
    loss = crit(be.asarray(logits), be.asarray(labels))
    assert loss.shape == () and loss.dtype == np.float32
    lse = np.log(np.exp(logits.astype(np.float64)).sum(1))
    assert float(loss) == pytest.approx(np.mean(lse - logits[np.arange(4), labels]), rel=1e-6)
    d = to_host(be, crit.backward())
    p = np.exp(logits - lse[:, None])
    p[np.arange(4), labels] -= 1
    np.testing.assert_allclose(d, p / 4, rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match=r"SoftmaxCrossEntropy.backward\(\) called without a preceding forward"):
        crit.backward()
    fast = nn.SoftmaxCrossEntropy(check_range=False)  # no device->host read for the label range
    assert float(fast(be.asarray(logits), be.asarray(labels))) == float(loss)
