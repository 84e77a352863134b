"""gpunet.init: the documented formulas (statistics on large draws), determinism from the seed,
and per-layer selection."""
import math

import numpy as np
import pytest

from gpunet import init, nn


@pytest.mark.parametrize("name,shape,std", [
    ("kaiming_normal", (64, 32, 3, 3), math.sqrt(2 / (32 * 9))),
    ("kaiming_uniform", (64, 32, 3, 3), math.sqrt(2 / (32 * 9))),       # U(-b, b) has std b / sqrt(3)
    ("xavier_normal", (300, 200), math.sqrt(2 / 500)),
    ("xavier_uniform", (300, 200), math.sqrt(2 / 500)),
    ("lecun_normal", (100, 50, 2, 2), math.sqrt(1 / 200)),
    ("head_normal", (100, 400), 0.3 / math.sqrt(400)),
])
def test_scale_follows_the_formula(name, shape, std):
    w = init.get(name)(shape, np.random.default_rng(0))
    assert w.shape == shape and w.dtype == np.float64
    assert abs(w.mean()) < 0.05 * std
    assert w.std() == pytest.approx(std, rel=0.03)
    if "uniform" in name:
        assert np.abs(w).max() <= std * math.sqrt(3) + 1e-12


def test_fans_and_zeros():
    assert init.fans((8, 3, 5, 5)) == (75, 200)
    assert init.fans((10, 784)) == (784, 10)
    assert not init.zeros((2, 3)).any()
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fans((5,))


def test_same_seed_same_weights():
    a = init.kaiming_normal((4, 3), np.random.default_rng(1))
    b = init.kaiming_normal((4, 3), 1)
    np.testing.assert_array_equal(a, b)


def test_per_layer_selection_and_errors(numpy_backend):
    numpy_backend.seed(3)
    layer = nn.Conv2d(2, 4, 3, init="xavier_uniform")
    want = init.xavier_uniform((4, 2, 3, 3), np.random.default_rng(3)).astype(np.float32)
    np.testing.assert_array_equal(layer.weight.data, want)
    assert not layer.bias.data.any()
    custom = nn.Linear(3, 2, init=lambda shape, rng: np.full(shape, 0.5))
    assert (custom.weight.data == 0.5).all()
    with pytest.raises(ValueError, match=r"unknown init 'he'; expected one of \['head_normal', 'kaiming_normal'"):
        nn.Linear(2, 2, init="he")
