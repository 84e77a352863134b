"""gpunet.sanity: the initial loss of an unsure classifier is about log(C); tiny models overfit 16 samples."""
import logging
import math

import numpy as np
import pytest

from gpunet import nn
from gpunet.sanity import initial_loss_check, overfit_tiny_batch


@pytest.fixture
def tiny_batch(rng):
    X = rng.standard_normal((16, 1, 6, 6)).astype(np.float32)
    y = np.arange(16) % 4  # four classes, random inputs: only memorisation can fit them
    return X, y


def mlp(final_init="xavier_normal"):
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 4, init=final_init))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, activation="relu"), nn.BatchNorm2d(4), nn.MaxPool2d(2),
                         nn.Residual(nn.Conv2d(4, 4, 3, padding=1), activation="relu"), nn.Flatten(),
                         nn.Dropout(0.1), nn.Linear(36, 4, init="zeros"))


def test_initial_loss_is_about_log_c(tiny_batch, caplog):
    X, y = tiny_batch
    model = cnn()
    report = initial_loss_check(model, X, y, num_classes=4)
    assert report.ok and report.loss == pytest.approx(math.log(4), rel=1e-6)  # zero last layer: uniform
    assert report.expected == pytest.approx(math.log(4)) and "vs log(C)" in str(report)
    assert model.training and all(m._cache is None for m in model.modules())  # mode kept, no side effects
    loud = mlp(final_init=lambda shape, rng: rng.standard_normal(shape) * 10)
    with caplog.at_level(logging.WARNING, logger="gpunet"):
        report = initial_loss_check(loud, X, y, num_classes=4)
    assert not report.ok and report.loss > 2 * math.log(4)
    assert "suspicious" in caplog.text
    with pytest.raises(ValueError, match=r"model output \(16, 4\) is not \(N, 10\)"):
        initial_loss_check(loud, X, y, num_classes=10)


@pytest.mark.parametrize("make", [mlp, cnn], ids=["mlp", "cnn"])
def test_overfits_a_tiny_batch(tiny_batch, make):
    X, y = tiny_batch
    model = make()
    assert overfit_tiny_batch(model, X, y, steps=150, lr=1e-2) == 1.0
    assert model.training


def test_a_broken_model_does_not_overfit(tiny_batch):
    X, y = tiny_batch
    model = mlp()
    for p in model.parameters():
        p.requires_grad = False  # nothing can learn
    assert overfit_tiny_batch(model, X, y, steps=20) < 1.0


@pytest.mark.parametrize("name", ["cnn", "lenet", "resnet-small", "mlp"])
def test_built_in_models_start_unsure_on_digits(name):
    """Every ready-made model passes its own sanity check on real data, for several seeds (He-initialised
    heads started at a loss of 3.5-6 on digits, and the check flagged them)."""
    from gpunet.data import load_digits
    from gpunet.models import build_model
    d = load_digits()
    for seed in range(3):
        model = build_model(name, d.in_shape, d.num_classes, seed=seed)
        report = initial_loss_check(model, d.x_train[:256], d.y_train[:256], d.num_classes)
        assert report.ok, (name, seed, str(report))
