"""gpunet.models: every model builds for digits, MNIST and CIFAR shapes, runs forward and backward,
and is seeded."""
import importlib.util

import numpy as np
import pytest

from gpunet import nn
from gpunet.models import MODELS, build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_shapes(name, shape):
    model = build_model(name, shape, 10, seed=0)
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    logits = model(x)
    assert logits.shape == (3, 10) and logits.dtype == np.float32 and np.isfinite(logits).all()
    dx = model.backward(np.ones_like(logits) / 3)
    assert dx.shape == x.shape
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, pname


def test_default_cnn_has_the_advertised_layers():
    model = build_model("cnn", (1, 8, 8), 10)
    kinds = [type(m) for m in model.modules()]
    for k in (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.Residual, nn.Linear):
        assert k in kinds, k.__name__
    assert model[0].activation == "relu"  # the fused conv+ReLU
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 10


def test_seed_fixes_weights():
    a = build_model("cnn", (1, 8, 8), 10, seed=3).state_dict()
    b = build_model("cnn", (1, 8, 8), 10, seed=3).state_dict()
    c = build_model("cnn", (1, 8, 8), 10, seed=4).state_dict()
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a if k.endswith("weight"))


def test_pytorch_style_state_names():
    keys = list(build_model("resnet-small", (3, 32, 32), 10).state_dict())
    assert "0.weight" in keys and "1.running_mean" in keys and "1.num_batches_tracked" in keys
    assert any(k.startswith("4.shortcut.0.") for k in keys) and keys[-1] == "7.bias"


def test_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg19'"):
        build_model("vgg19", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"expected in_shape \(C, H, W\)"):
        build_model("cnn", (8, 8), 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (1, 8, 8), 1)


@pytest.mark.skipif(importlib.util.find_spec("gpunet.cuda.ops") is None, reason="CUDA ops not built yet")
def test_cnn_on_the_device_matches_numpy(device_backend):
    x = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    ref = build_model("cnn", (1, 8, 8), 10, seed=0).eval()(x)
    model = build_model("cnn", (1, 8, 8), 10, seed=0, backend=device_backend).eval()
    out = device_backend.asnumpy(model(device_backend.asarray(x)))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
