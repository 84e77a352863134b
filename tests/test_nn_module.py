"""Module plumbing: names, state_dict round trips and errors, devices, modes, caches, PyTorch interchange."""
import numpy as np
import pytest

from gpunet import nn
from gpunet.backend import get_backend

try:
    import torch
except ImportError:  # optional cross-check
    torch = None


def small_cnn(**kw):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, activation="relu", **kw), nn.BatchNorm2d(4, **kw), nn.MaxPool2d(2),
        nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, **kw), nn.BatchNorm2d(4, **kw), nn.ReLU()),
                    activation="relu"),
        nn.Flatten(), nn.Dropout(0.1), nn.Linear(4 * 3 * 3, 10, **kw))


EXPECTED_KEYS = [
    ("0.weight", (4, 1, 3, 3)), ("0.bias", (4,)),
    ("1.weight", (4,)), ("1.bias", (4,)), ("1.running_mean", (4,)), ("1.running_var", (4,)),
    ("1.num_batches_tracked", ()),
    ("3.body.0.weight", (4, 4, 3, 3)), ("3.body.0.bias", (4,)),
    ("3.body.1.weight", (4,)), ("3.body.1.bias", (4,)), ("3.body.1.running_mean", (4,)),
    ("3.body.1.running_var", (4,)), ("3.body.1.num_batches_tracked", ()),
    ("6.weight", (10, 36)), ("6.bias", (10,)),
]


def test_names_and_shapes_follow_pytorch():
    model = small_cnn()
    sd = model.state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == EXPECTED_KEYS
    assert all(type(v) is np.ndarray for v in sd.values())
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["0.weight"].dtype == np.float32
    assert [n for n, _ in model.named_parameters()] == [k for k, _ in EXPECTED_KEYS if "running" not in k
                                                        and "num_batches" not in k]
    assert [n for n, _ in model.named_buffers()] == [k for k, _ in EXPECTED_KEYS if "running" in k or "num_b" in k]
    assert len(list(model.parameters())) == 10


def test_state_dict_is_a_snapshot_and_round_trips(rng):
    a, b = small_cnn(), small_cnn()
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    a(x)  # moves BN statistics
    sd = a.state_dict()
    a[0].weight.data += 1  # later training must not change the saved dict
    assert not np.array_equal(sd["0.weight"], a.state_dict()["0.weight"])
    result = b.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    b[0].weight.data += 1  # the loaded model owns its arrays: the dict stays a snapshot
    assert not np.array_equal(sd["0.weight"], b.state_dict()["0.weight"])
    b.load_state_dict(sd)
    for (k, v), (k2, v2) in zip(sd.items(), b.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2)
    assert int(b[1].num_batches_tracked) == 1
    a.load_state_dict(sd)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))


def test_load_state_dict_errors_name_key_and_shapes():
    model = small_cnn()
    sd = model.state_dict()
    bad = dict(sd, **{"3.body.0.weight": np.zeros((4, 1, 3, 3), np.float32)})
    before = model.state_dict()["0.weight"].copy()
    with pytest.raises(ValueError, match=r"shape mismatch for '3.body.0.weight': checkpoint has \(4, 1, 3, 3\), "
                                         r"model expects \(4, 4, 3, 3\)"):
        model.load_state_dict(dict(bad, **{"0.weight": np.ones((4, 1, 3, 3))}))
    np.testing.assert_array_equal(model.state_dict()["0.weight"], before)  # nothing loaded on error
    missing = {k: v for k, v in sd.items() if k != "6.bias"}
    with pytest.raises(KeyError, match=r"missing \['6.bias'\], unexpected \['extra'\]"):
        model.load_state_dict(dict(missing, extra=np.zeros(1)))
    res = model.load_state_dict(dict(missing, extra=np.zeros(1)), strict=False)
    assert res.missing_keys == ["6.bias"] and res.unexpected_keys == ["extra"]


def test_load_casts_to_the_model_dtype():
    model = nn.Linear(2, 3)
    model.load_state_dict({"weight": np.ones((3, 2), np.float64), "bias": [1, 2, 3]})
    assert model.weight.data.dtype == np.float32 and model.bias.data.tolist() == [1, 2, 3]


def test_to_moves_and_casts(backend):
    model = small_cnn().to(backend, dtype=np.float64)
    assert model.backend is backend and all(m.backend is backend for m in model.modules())
    assert all(p.data.dtype == np.float64 for p in model.parameters())
    assert model[1].num_batches_tracked.dtype == np.int64
    assert all(type(p.data).__module__.startswith("cupy") == backend.is_gpu for p in model.parameters())
    model.to("numpy").float()
    assert model.backend is get_backend("numpy") and model[0].weight.data.dtype == np.float32
    with pytest.raises(TypeError, match="dtype must be a floating type"):
        model.to(dtype=np.int32)


def test_load_state_dict_takes_arrays_on_the_models_device_or_the_host(backend):
    """Copying weights between two models on one device must not go through np.asarray (CuPy refuses that)."""
    src, dst, host = small_cnn().to(backend), small_cnn().to(backend), small_cnn()
    on_device = {k: backend.asarray(v) for k, v in src.state_dict().items()}
    for model in (dst, host):
        assert model.load_state_dict(on_device) == ([], [])
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, src.state_dict()[k], err_msg=k)
    assert all(type(p.data).__module__.startswith("cupy") == backend.is_gpu for p in dst.parameters())
    assert not any(type(p.data).__module__.startswith("cupy") for p in host.parameters())
    assert dst[0].weight.data is not on_device["0.weight"]          # the model owns its copy


def test_layers_built_on_a_backend_draw_from_its_rng(numpy_backend):
    numpy_backend.seed(7)
    a = nn.Conv2d(2, 3, 3)
    numpy_backend.seed(7)
    b = nn.Conv2d(2, 3, 3, backend="numpy", dtype=np.float64)
    np.testing.assert_allclose(a.weight.data, b.weight.data, rtol=1e-6)  # same draw, float32 vs float64
    assert not a.bias.data.any()


def test_train_eval_and_caches(rng):
    model = small_cnn()
    assert model.training and all(m.training for m in model.modules())
    assert model.eval() is model and not any(m.training for m in model.modules())
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    model(x)
    assert all(m._cache is None for m in model.modules())  # eval keeps nothing
    with pytest.raises(RuntimeError, match=r"Sequential.backward\(\) called without a preceding forward\(\) in training"):
        model.backward(np.ones((2, 10), np.float32))
    model.train()
    y = model(x)
    model.backward(np.ones_like(y))
    assert all(m._cache is None for m in model.modules())  # backward frees the caches
    with pytest.raises(RuntimeError, match="called without a preceding forward"):
        model.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match=r"Conv2d.backward\(\) called without"):
        nn.Conv2d(1, 1, 1).backward(np.ones((1, 1, 1, 1), np.float32))


@pytest.mark.parametrize("first", ["conv", "linear", "batchnorm"])
def test_backward_params_matches_backward_and_skips_the_input_gradient(rng, monkeypatch, first):
    """backward_params (what a training step calls): the same parameter gradients, with the first
    layer's input gradient never computed when that layer can skip it."""
    def build():
        if first == "conv":  # small_cnn without its dropout (two instances draw different masks)
            return nn.Sequential(*[m for m in small_cnn() if not isinstance(m, nn.Dropout)])
        if first == "linear":
            return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
        return nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 3))
    x = rng.standard_normal((2, 1, 6, 6) if first == "conv" else (4, 6)).astype(np.float32)
    a, b = build(), build()
    b.load_state_dict(a.state_dict())
    ya, yb = a(x), b(x)
    dy = rng.standard_normal(ya.shape).astype(np.float32)
    dx = a.backward(dy)
    assert dx.shape == x.shape
    seen = []
    ops = b[0]._backend.ops
    real = ops.conv2d_backward
    monkeypatch.setattr(type(ops), "conv2d_backward",
                        lambda self, dy_, ctx, input_grad=True: (seen.append(input_grad), real(dy_, ctx, input_grad))[1])
    assert b.backward_params(dy) is None
    if first == "conv":
        assert seen[-1] is False and all(seen[:-1])   # only the first conv skips dx
    assert all(m._cache is None for m in b.modules())
    first_layer = {"0." + n for n, _ in b[0].named_parameters()}
    for (na, pa), (nb_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb_
        if na in first_layer:   # its dW may come from a different GEMM (thin inputs: per image)
            np.testing.assert_allclose(pa.grad, pb.grad, rtol=1e-5, atol=1e-5, err_msg=na)
        else:                   # everything upstream of it runs the very same code
            np.testing.assert_array_equal(pa.grad, pb.grad, err_msg=na)


def test_zero_grad_and_frozen_parameters(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].weight.requires_grad = False
    x = rng.standard_normal((5, 3)).astype(np.float32)
    model.backward(np.ones_like(model(x)))
    assert model[0].weight.grad is None and model[0].bias.grad is not None
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_containers_refuse_children_on_different_devices(backend):
    if backend.name == "numpy":
        pytest.skip("needs a second device")
    with pytest.raises(Exception, match="children live on different devices"):
        nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, backend=backend))
    seq = nn.Sequential(nn.ReLU(), nn.Linear(2, 2, backend=backend))
    assert seq.backend is backend and seq[0].backend is backend  # parameter-free children follow


def test_module_attribute_protocol():
    m = nn.Module()
    m.child = nn.Linear(1, 1)
    m.register_buffer("stat", np.zeros(2))
    m.scale = 3
    assert [k for k in m.state_dict()] == ["stat", "child.weight", "child.bias"]
    m.stat = np.ones(2)
    assert m.state_dict()["stat"].tolist() == [1, 1]
    del m.child
    assert list(m.state_dict()) == ["stat"]
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        m.nope
    assert "Linear(in_features=1, out_features=1, bias=True)" in repr(nn.Sequential(nn.Linear(1, 1)))


def torch_net():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.BatchNorm2d(4), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 2, 3, stride=2, padding=1), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(2, 3))


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_pytorch_interchange_outputs_and_gradients(rng):
    """PyTorch weights load into the same architecture here and give the same outputs and gradients;
    our state_dict loads back into PyTorch with strict=True."""
    torch.manual_seed(0)
    tnet = torch_net()
    ours = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2),
        nn.Conv2d(4, 2, 3, stride=2, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2, 3))
    ours.load_state_dict({k: v.detach() for k, v in tnet.state_dict().items()})
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = tnet(tx)
    y = ours(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours.backward(dy), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    tparams = dict(tnet.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    for k, v in tnet.state_dict().items():  # running statistics moved identically
        np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    tnet.eval(), ours.eval()
    np.testing.assert_allclose(ours(x), tnet(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    back = torch_net()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=True)
