"""Every layer, container, loss and recurrent layer's node by gradcheck in float64, on every backend (NumPy,
the emulator of the CUDA kernels, and CuPy or its stand-in): the nodes call each backend's own ops."""
import numpy as np
import pytest

from gpunet import nn
from gpunet.gradcheck import gradcheck

F64 = dict(dtype=np.float64)


def tie_free(rng, shape, scale=1.0):
    """A shuffled linspace: no two elements equal and none at 0, so max-pool and ReLU kinks stay away."""
    n = int(np.prod(shape))
    v = np.linspace(0.1, 1.0, n) * rng.choice([-1, 1], size=n)
    return rng.permutation(v).reshape(shape) * scale


LAYERS = {
    "conv relu": (lambda: nn.Conv2d(2, 3, 3, padding=1, activation="relu", **F64), (2, 2, 4, 4)),
    "conv strided no bias": (lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False, **F64), (1, 2, 5, 5)),
    "linear": (lambda: nn.Linear(4, 3, **F64), (2, 4)),
    "linear no bias": (lambda: nn.Linear(4, 3, bias=False, **F64), (2, 4)),
    "batchnorm2d train": (lambda: nn.BatchNorm2d(2, **F64), (3, 2, 2, 2)),
    "batchnorm1d train no affine": (lambda: nn.BatchNorm1d(3, affine=False, **F64), (4, 3)),
    "batchnorm2d eval": (lambda: nn.BatchNorm2d(2, **F64).eval(), (2, 2, 3, 2)),
    "maxpool overlapping": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 5, 5)),
    "avgpool": (lambda: nn.AvgPool2d(2), (1, 2, 4, 4)),
    "global avgpool": (lambda: nn.GlobalAvgPool2d(), (2, 3, 2, 3)),
    "flatten": (lambda: nn.Flatten(), (2, 2, 1, 3)),
    "dropout": (lambda: nn.Dropout(0.4), (3, 5)),
    "relu": (lambda: nn.ReLU(), (3, 4)),
    "leaky relu": (lambda: nn.LeakyReLU(0.1), (3, 4)),
    "prelu per channel": (lambda: nn.PReLU(3, **F64), (2, 3, 2)),
    "elu": (lambda: nn.ELU(0.7), (3, 4)),
    "sigmoid": (lambda: nn.Sigmoid(), (3, 4)),
    "tanh": (lambda: nn.Tanh(), (3, 4)),
    "residual relu projection": (lambda: nn.Residual(
        nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, **F64), nn.BatchNorm2d(3, **F64)),
        nn.Conv2d(2, 3, 1, **F64), activation="relu"), (2, 2, 3, 3)),
    "residual identity": (lambda: nn.Residual(nn.Sequential(nn.Linear(3, 3, **F64), nn.Tanh())), (2, 3)),
    "concat": (lambda: nn.Concat(nn.Conv2d(2, 1, 1, **F64), nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, **F64),
                                                                       nn.ReLU())), (1, 2, 3, 3)),
    "rnn relu 2 layers": (lambda: nn.RNN(3, 4, num_layers=2, nonlinearity="relu", **F64), (2, 3, 3)),
    "gru": (lambda: nn.GRU(3, 4, **F64), (2, 3, 3)),
    "lstm 2 layers": (lambda: nn.LSTM(3, 2, num_layers=2, **F64), (2, 3, 3)),
    "lstm last step": (lambda: nn.Sequential(nn.LSTM(2, 3, **F64), nn.LastStep(), nn.Linear(3, 2, **F64)),
                       (2, 4, 2)),
    "rows as sequence": (lambda: nn.Sequential(nn.RowsAsSequence(), nn.GRU(2 * 3, 2, **F64)), (2, 2, 3, 3)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_by_gradcheck(backend, rng, name):
    make, shape = LAYERS[name]
    layer = make().to(backend)
    report = gradcheck(layer, backend.asarray(tie_free(rng, shape)))
    assert report.ok and report.checks[0].name == "input"
    assert [c.name for c in report.checks[1:]] == [n for n, _ in layer.named_parameters()]


def test_embedding_by_gradcheck(backend, rng):
    emb = nn.Embedding(5, 3, **F64).to(backend)  # (padding_idx's zero gradient is by definition not numerical)
    ids = backend.asarray(np.array([[0, 1, 4], [4, 4, 2]]))

    report = gradcheck(emb, ids)  # repeated ids add up
    assert [c.name for c in report.checks] == ["weight"] and report.ok


@pytest.mark.parametrize("loss", ["softmax cross-entropy", "bce with logits", "mse"])
def test_every_loss_by_gradcheck_including_float_targets(backend, rng, loss):
    x = backend.asarray(rng.standard_normal((4, 3)))
    if loss == "softmax cross-entropy":
        report = gradcheck(nn.SoftmaxCrossEntropy(), (x, backend.asarray(np.array([0, 2, 1, 2]))))
    elif loss == "bce with logits":
        report = gradcheck(lambda a, t: nn.BCEWithLogits()(a, t), (x, backend.asarray(rng.uniform(0, 1, (4, 3)))))
    else:
        report = gradcheck(lambda a, t: nn.MSELoss()(a, t), (x, backend.asarray(rng.standard_normal((4, 3)))))
    assert report.ok
